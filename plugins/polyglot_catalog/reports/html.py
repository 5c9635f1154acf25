"""Self-contained HTML match report rendered with Jinja2.

Product text is hostile input: it only ever reaches the page through Jinja2 autoescaping, as text
content, never inside ``href``/``src``/``style`` attributes. Charts are inline SVG whose geometry is
computed here from numbers, so the report needs no JavaScript, fonts, images or network access, and a
Content-Security-Policy of ``default-src 'none'`` keeps it that way even if escaping ever failed.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from polyglot_catalog.matching.result import DECISIONS, MatchResult

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATE_NAME = "report.html.j2"

#: Characters of product text shown per side of a sample pair (texts can be 1 MB).
TEXT_LIMIT = 500
#: Characters of product text shown per unmatched product.
UNMATCHED_TEXT_LIMIT = 180
#: Unmatched products listed in the report (all of them are in ``unmatched.parquet``).
UNMATCHED_LIMIT = 300
#: Threshold-sweep rows shown before the table is thinned out.
SWEEP_ROWS = 30

DECISION_LABELS = {
    "match": "accepted",
    "below_threshold": "below threshold",
    "not_mutual": "not mutual best",
    "conflict": "group conflict",
}
#: Duplicate-listing sets and ambiguous matches listed in the report (all are in the Parquet files).
DUPLICATE_SETS_LIMIT = 100
AMBIGUOUS_LIMIT = 100
EVIDENCE_PREFIXES = ("ev_", "conflict_")

_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+|\s+|.", re.UNICODE)
_WORD_RE = re.compile(r"[^\W_]", re.UNICODE)


@dataclass(frozen=True)
class Segment:
    """A run of text and how it relates to the other text of its pair.

    ``kind`` is ``""`` (plain), ``"shared"`` (the token also occurs in the other text) or ``"only"`` (a
    number or code that the other text lacks: the likeliest sign of a variant, not a twin).
    """

    text: str
    kind: str = ""


# ---------------------------------------------------------------------------------------------
# text differences


def _norm_token(token: str) -> str:
    """Compare tokens the way a reader would: case-, width- and decimal-comma-insensitive."""
    token = unicodedata.normalize("NFKC", token).casefold()
    if token[:1].isdigit():
        token = token.replace(",", ".")
    return token


def _has_digit(token: str) -> bool:
    return any(ch.isdigit() for ch in token)


def diff_segments(text_a: str, text_b: str) -> tuple[list[Segment], list[Segment]]:
    """Mark which tokens of two product texts the other text shares, and numbers it lacks.

    Twins across regions are usually translations, so word order and most words differ and a
    sequence diff would mark nearly everything. Comparing token sets instead surfaces what matters
    to a reviewer: shared brand names, codes and numbers (evidence for a match) and numbers present
    on one side only (evidence for a variant such as another size).

    Args:
        text_a (str): the first text, already truncated for display.
        text_b (str): the second text.

    Returns:
        tuple[list[Segment], list[Segment]]: segments for ``text_a`` and for ``text_b``; joining the
        ``text`` of each list gives back the input unchanged.
    """
    tokens_a = _TOKEN_RE.findall(text_a)
    tokens_b = _TOKEN_RE.findall(text_b)
    set_a = {_norm_token(t) for t in tokens_a if _WORD_RE.search(t)}
    set_b = {_norm_token(t) for t in tokens_b if _WORD_RE.search(t)}
    return _segments(tokens_a, set_b), _segments(tokens_b, set_a)


def _segments(tokens: Sequence[str], other: set[str]) -> list[Segment]:
    out: list[Segment] = []
    for token in tokens:
        kind = ""
        if _WORD_RE.search(token):
            norm = _norm_token(token)
            # One-letter words ("x" in 60x120, articles) are noise when marked as shared.
            if norm in other and (len(norm) > 1 or _has_digit(norm)):
                kind = "shared"
            elif norm not in other and _has_digit(norm):
                kind = "only"
        if out and out[-1].kind == kind:
            out[-1] = Segment(out[-1].text + token, kind)
        else:
            out.append(Segment(token, kind))
    return out


def _truncate(text: Any, limit: int) -> tuple[str, bool]:
    """Shorten display text; the full text stays in the Parquet files."""
    text = _as_text(text)
    if len(text) <= limit:
        return text, False
    return text[:limit].rstrip() + " …", True


# ---------------------------------------------------------------------------------------------
# small value helpers


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _as_float(value: Any) -> float | None:
    """A finite float or None: NaN, None and junk all mean "no value" in the report."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def fmt_num(value: Any, digits: int = 3) -> str:
    """Format a score or metric for people; missing values show as an en dash."""
    number = _as_float(value)
    return "–" if number is None else f"{number:.{digits}f}"


def fmt_int(value: Any) -> str:
    number = _as_float(value)
    return "–" if number is None else f"{int(number):,}"


def fmt_seconds(value: Any) -> str:
    number = _as_float(value)
    if number is None:
        return "–"
    if number >= 120:
        return f"{number / 60:.1f} min"
    return f"{number:.2f} s" if number < 10 else f"{number:.1f} s"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round axis ticks so labels read 0.5, 0.6 … rather than 0.4837."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    value = first
    while value <= hi + 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


# ---------------------------------------------------------------------------------------------
# context pieces


#: Rows of codes indexed at a time (the fancy index makes an 8-byte flat index a row).
_CODE_SLICE = 1 << 20


def _categorical(*columns: pd.Series) -> bool:
    return all(isinstance(c.dtype, pd.CategoricalDtype) for c in columns)


def _distinct_products(region: pd.Series, sku: pd.Series) -> pd.DataFrame:
    """The distinct ``(region, sku)`` of two columns. On categoricals (the matcher's table) a flag per
    (region, SKU) category pair, set from the codes a slice of rows at a time, where
    ``drop_duplicates`` hashed both columns (~30 B a row: 378 MB at 12 M pairs, the page's peak, #26)."""
    if not _categorical(region, sku):
        return pd.DataFrame({"region": region, "sku": sku}).drop_duplicates()
    # code -1 (missing) indexes the last flag: a missing SKU stays missing, as astype(str) keeps it,
    # and rows without a region are left out, as counting by region leaves them out
    regions = [str(v) for v in region.cat.categories]
    names = np.asarray([str(v) for v in sku.cat.categories] + [np.nan], dtype=object)
    seen = np.zeros((len(regions) + 1, len(names)), dtype=bool)
    region_codes, sku_codes = region.cat.codes.to_numpy(), sku.cat.codes.to_numpy()
    for lo in range(0, len(region_codes), _CODE_SLICE):
        seen[region_codes[lo : lo + _CODE_SLICE], sku_codes[lo : lo + _CODE_SLICE]] = True
    found = [pd.DataFrame({"region": r, "sku": names[f]}) for r, f in zip(regions, seen[:-1], strict=True)]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=["region", "sku"])


def _products_per_region(result: MatchResult) -> dict[str, int]:
    """Count distinct (region, sku) over every table: no single table lists all products."""
    frames = []
    if {"region", "sku"} <= set(result.groups.columns):
        frames.append(result.groups[["region", "sku"]])
    if {"region", "sku"} <= set(result.unmatched.columns):
        frames.append(result.unmatched[["region", "sku"]])
    for side in ("a", "b"):
        cols = [f"region_{side}", f"sku_{side}"]
        if set(cols) <= set(result.pairs.columns):
            # distinct first: a pairs table names each product ~k times, and its millions of rows as
            # strings were the report's memory peak
            frames.append(_distinct_products(result.pairs[cols[0]], result.pairs[cols[1]]))
    if not frames:
        return {}
    both = pd.concat([f.astype(str) for f in frames], ignore_index=True).drop_duplicates()
    return {str(k): int(v) for k, v in both.groupby("region").size().items()}


def _region_order(summary: Mapping[str, Any], products: Mapping[str, int]) -> list[str]:
    declared = summary.get("regions")
    order: list[str] = []
    # A list of names or a {region: count} mapping: either way iteration yields the names.
    if isinstance(declared, Iterable) and not isinstance(declared, str | bytes):
        order = [str(r) for r in declared]
    for region in sorted(products):
        if region not in order:
            order.append(region)
    return order


def _region_pair_counts(pairs: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """``(region_a, region_b) -> (pairs, accepted)`` of a pairs table. On categoricals (the matcher's
    table) counted on the codes a slice of rows at a time, where a groupby built an 8-byte key and a
    hash table a row (+370 MB at 12.5 M pairs, #26)."""
    region_a, region_b = pairs["region_a"], pairs["region_b"]
    accepted = (pairs["decision"] == "match").to_numpy(bool, na_value=False)
    if not _categorical(region_a, region_b):
        grouped = pd.Series(accepted, index=pairs.index).groupby([region_a, region_b], observed=True)
        return {
            (str(a), str(b)): (int(n), int(m))
            for (a, b), n, m in zip(grouped.size().index, grouped.size(), grouped.sum(), strict=True)
        }
    names_a, names_b = region_a.cat.categories, region_b.cat.categories
    codes_a, codes_b = region_a.cat.codes.to_numpy(), region_b.cat.codes.to_numpy()
    cells = len(names_a) * len(names_b)
    sizes, sums = np.zeros(cells, np.int64), np.zeros(cells, np.int64)
    for lo in range(0, len(codes_a), _CODE_SLICE):
        a, b = codes_a[lo : lo + _CODE_SLICE], codes_b[lo : lo + _CODE_SLICE]
        known = (a >= 0) & (b >= 0)  # a missing region is in no region pair, as groupby leaves it out
        key = a[known].astype(np.int64) * len(names_b) + b[known]
        sizes += np.bincount(key, minlength=cells)
        sums += np.bincount(key[accepted[lo : lo + _CODE_SLICE][known]], minlength=cells)
    return {
        (str(names_a[i // len(names_b)]), str(names_b[i % len(names_b)])): (int(sizes[i]), int(sums[i]))
        for i in np.flatnonzero(sizes)
    }


def _pair_counts(result: MatchResult, regions: Sequence[str]) -> list[dict[str, Any]]:
    """Candidates and matches per region pair, from the summary or, failing that, the pairs table."""
    counts: dict[tuple[str, str], dict[str, Any]] = {}
    summary_counts = result.summary.get("counts")
    if isinstance(summary_counts, Mapping):
        for key, value in summary_counts.items():
            parts = str(key).split("|")
            if len(parts) != 2 or not isinstance(value, Mapping):
                continue
            a, b = sorted(parts)
            counts[(a, b)] = {
                "candidates": _as_float(value.get("candidates")),
                "matches": _as_float(value.get("matches")),
            }
    pairs = result.pairs
    if {"region_a", "region_b", "decision"} <= set(pairs.columns) and len(pairs):
        for (a, b), (n, m) in _region_pair_counts(pairs).items():
            a, b = sorted((str(a), str(b)))
            entry = counts.setdefault((a, b), {"candidates": None, "matches": None})
            if entry["candidates"] is None:
                entry["candidates"] = float(n)
            if entry["matches"] is None:
                entry["matches"] = float(m)
    position = {r: i for i, r in enumerate(regions)}
    rows = []
    for (a, b), value in sorted(counts.items(), key=lambda kv: (position.get(kv[0][0], 99), kv[0])):
        rows.append({"a": a, "b": b, "key": f"{a}|{b}", **value})
    return rows


def _matrix(
    regions: Sequence[str], pair_rows: Sequence[Mapping[str, Any]], products: Mapping[str, int]
) -> list[dict[str, Any]]:
    """Rows of the region x region table; off-diagonal cells shaded by matches (CSS classes q0-q5)."""
    lookup = {(r["a"], r["b"]): r for r in pair_rows}
    peak = max((r["matches"] or 0 for r in pair_rows), default=0) or 1
    table = []
    for ra in regions:
        cells = []
        for rb in regions:
            if ra == rb:
                cells.append({"diagonal": True, "products": products.get(ra)})
                continue
            entry = lookup.get(tuple(sorted((ra, rb))))  # type: ignore[arg-type]
            matches = entry["matches"] if entry else None
            smaller = min(products.get(ra, 0), products.get(rb, 0))
            cells.append(
                {
                    "diagonal": False,
                    "matches": matches,
                    "candidates": entry["candidates"] if entry else None,
                    "coverage": (matches / smaller) if matches is not None and smaller else None,
                    "shade": 0 if not matches else 1 + min(4, int(4 * matches / peak)),
                }
            )
        table.append({"region": ra, "cells": cells})
    return table


def _decision_counts(decision: pd.Series, rest: Any) -> pd.Series:
    """Pairs per decision, most first, with the pairs the table does not hold (all
    ``below_threshold``) counted in: what ``value_counts`` of the whole table gives."""
    if rest is None or not rest.count:
        return decision.value_counts()
    counts = decision.value_counts(sort=False)
    counts["below_threshold"] = counts.get("below_threshold", 0) + rest.count
    return counts.sort_values(ascending=False, kind="stable")


def _histogram(pairs: pd.DataFrame, threshold: float | None, rest: Any = None) -> dict[str, Any] | None:
    """Two stacked panels (accepted above rejected) sharing one score axis, each scaled to itself.

    Rejected candidates usually outnumber accepted ones many times over; one shared y-axis would
    flatten the accepted distribution into the floor. ``rest``: the rejected pairs the table does not
    hold (:class:`.held_pairs.RestPairs`), their scores read from the parts.
    """
    if "score" not in pairs.columns or "decision" not in pairs.columns:
        return None
    scores = pd.to_numeric(pairs["score"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    ok = np.isfinite(scores)
    extra = rest is not None and rest.count > 0
    if not ok.any() and not extra:
        return None
    scores = scores[ok]
    accepted = (pairs["decision"] == "match").to_numpy()[ok]
    ends = [scores.min(), scores.max()] if len(scores) else []
    if extra:
        ends += [rest.floor.rest_low, rest.floor.rest_high]
    lo, hi = float(np.min(ends)), float(np.max(ends))
    if threshold is not None:
        lo, hi = min(lo, threshold), max(hi, threshold)
    lo = math.floor(lo * 20) / 20
    hi = math.ceil(hi * 20) / 20
    if hi - lo < 0.1:
        hi = lo + 0.1
    bins = min(40, max(10, round((hi - lo) / 0.025)))
    edges = np.linspace(lo, hi, bins + 1)

    # Each panel's title sits in the band above it (top / gap), never under its bars: a tall first
    # bar drawn over a title inside the panel clipped it ("jected pairs").
    width, left, right, panel_h, gap, top = 1000, 56, 16, 120, 40, 24
    plot_w = width - left - right

    def x_of(value: float) -> float:
        return round(left + (value - lo) / (hi - lo) * plot_w, 2)

    panels = []
    for index, (label, css, mask) in enumerate(
        (("accepted pairs", "acc", accepted), ("rejected pairs", "rej", ~accepted))
    ):
        counts, _ = np.histogram(scores[mask], bins=edges)
        if css == "rej" and extra:  # the pairs the table does not hold, read from the parts
            for part in rest.scores():
                counts = counts + np.histogram(part, bins=edges)[0].astype(counts.dtype)
        peak = int(counts.max()) if counts.size else 0
        y0 = top + index * (panel_h + gap)
        bars = []
        for i, count in enumerate(counts):
            if not count:
                continue
            h = round(panel_h * count / max(peak, 1), 2)
            bars.append(
                {
                    "x": x_of(edges[i]) + 0.5,
                    "w": max(round(x_of(edges[i + 1]) - x_of(edges[i]) - 1, 2), 0.5),
                    "y": round(y0 + panel_h - h, 2),
                    "h": h,
                    "count": int(count),
                    "lo": float(edges[i]),
                    "hi": float(edges[i + 1]),
                }
            )
        panels.append(
            {
                "label": label,
                "css": css,
                "total": int(mask.sum()) + (rest.count if css == "rej" and extra else 0),
                "peak": peak,
                "y0": y0,
                "label_y": y0 - 8,
                "base": y0 + panel_h,
                "bars": bars,
            }
        )
    height = top + 2 * panel_h + gap + 48  # tick labels, then the threshold's label under the axis
    return {
        "width": width,
        "height": height,
        "left": left,
        "right": width - right,
        "panels": panels,
        "ticks": [{"x": x_of(t), "label": f"{t:g}"} for t in _nice_ticks(lo, hi, 8)],
        "axis_y": panels[-1]["base"],
        "threshold_x": x_of(threshold) if threshold is not None else None,
        "threshold": threshold,
        # the label sits under the axis, beside the line, on the side with room
        "threshold_anchor": "end" if threshold is not None and x_of(threshold) > width * 0.85 else "middle",
        "top": top,
    }


def _curve_rows(rows: Any) -> list[dict[str, float | None]]:
    out = []
    if not isinstance(rows, Iterable) or isinstance(rows, str | bytes | Mapping):
        return out
    for row in rows:
        if not isinstance(row, Mapping):
            continue
        out.append(
            {
                "threshold": _as_float(row.get("threshold")),
                "precision": _as_float(row.get("precision")),
                "recall": _as_float(row.get("recall")),
                "f1": _as_float(row.get("f1")),
            }
        )
    return out


def _run_row(rows: Sequence[Mapping[str, Any]], threshold: float | None) -> int | None:
    """Index of the row at exactly the run's threshold (the matcher adds one), else None.

    Nearest-row matching put the PR-curve dot and the sweep's "used" row at thresholds the run
    never used; a report without that row marks nothing rather than something else.
    """
    if threshold is None:
        return None
    for i, row in enumerate(rows):
        if row["threshold"] is not None and math.isclose(row["threshold"], threshold, abs_tol=5e-5):
            return i
    return None


#: A PR curve with fewer distinct (recall, precision) points than this says nothing; a note replaces it.
MIN_CURVE_POINTS = 3


def _pr_chart(metrics: Mapping[str, Any], threshold: float | None) -> dict[str, Any] | None:
    """Precision-recall curve over the threshold sweep, the run's own threshold marked.

    Drawn from the sweep rows (the matcher's ``pr_curve`` holds the same rows), so each point is a
    threshold decided as the run decides and the dot is the run's own figures. When every threshold
    gives (nearly) the same precision and recall, as in a tiny run, the chart is replaced by a note.
    """
    curve = [
        r
        for r in _curve_rows(metrics.get("threshold_sweep"))
        if r["precision"] is not None and r["recall"] is not None and r["threshold"] is not None
    ]
    if not curve:
        return None
    distinct = {(round(r["recall"], 3), round(r["precision"], 3)) for r in curve}
    if len(distinct) < MIN_CURVE_POINTS:
        lo = min(r["threshold"] for r in curve)
        hi = max(r["threshold"] for r in curve)
        return {
            "flat": True,
            "points_distinct": len(distinct),
            "lo": lo,
            "hi": hi,
            "levels": [{"recall": rc, "precision": pr} for rc, pr in sorted(distinct)],
        }
    size, left, top = 300, 52, 14
    width, height = left + size + 20, top + size + 46

    def xy(recall: float, precision: float) -> tuple[float, float]:
        return round(left + recall * size, 2), round(top + (1 - precision) * size, 2)

    ordered = sorted(curve, key=lambda r: (r["recall"], -r["precision"]))
    points = " ".join(f"{x},{y}" for x, y in (xy(r["recall"], r["precision"]) for r in ordered))
    marker = None
    index = _run_row(curve, threshold)
    if index is not None:
        row = curve[index]
        x, y = xy(row["recall"], row["precision"])
        marker = {"x": x, "y": y, **row, "label_left": x > left + size * 0.6}
    ticks = [
        {"v": t, "x": xy(t, 0)[0], "y": xy(0, t)[1], "label": f"{t:g}"} for t in (0, 0.2, 0.4, 0.6, 0.8, 1)
    ]
    return {
        "flat": False,
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "size": size,
        "right": left + size,
        "bottom": top + size,
        "points": points,
        "marker": marker,
        "ticks": ticks,
    }


def _sweep_rows(metrics: Mapping[str, Any], threshold: float | None) -> list[dict[str, Any]]:
    """The sweep table, thinned to about SWEEP_ROWS but always keeping the run's and best-F1 rows."""
    rows = _curve_rows(metrics.get("threshold_sweep"))
    if not rows:
        return []
    chosen = _run_row(rows, threshold)
    scored = [i for i, r in enumerate(rows) if r["f1"] is not None]
    best = max(scored, key=lambda i: (rows[i]["f1"], i == chosen)) if scored else None
    step = max(1, math.ceil(len(rows) / SWEEP_ROWS))
    keep = (
        {i for i in range(0, len(rows), step)}
        | {len(rows) - 1}
        | {i for i in (chosen, best) if i is not None}
    )
    return [{**rows[i], "chosen": i == chosen, "best": i == best} for i in sorted(keep)]


def _metric_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    overall = metrics.get("overall")
    by_pair = metrics.get("by_pair")
    if isinstance(by_pair, Mapping):
        for key, value in by_pair.items():
            if isinstance(value, Mapping):
                out.append({"name": str(key).replace("|", " ↔ "), "overall": False, **_metric_values(value)})
    if isinstance(overall, Mapping):
        out.append({"name": "all pairs", "overall": True, **_metric_values(overall)})
    return out


def _metric_values(value: Mapping[str, Any]) -> dict[str, Any]:
    return {k: value.get(k) for k in ("precision", "recall", "f1", "top1", "tp", "fp", "fn")}


def _evidence_columns(pairs: pd.DataFrame) -> list[str]:
    return [c for c in pairs.columns if str(c).startswith(EVIDENCE_PREFIXES)]


def _clean_explain(value: Any) -> str:
    """The matcher's ``"; "``-joined reasons without empty parts (an empty first reason left a
    leading ``"; "``)."""
    return "; ".join(part.strip() for part in _as_text(value).split(";") if part.strip())


def _verdict(value: Any) -> bool | None:
    """The pair's ``correct`` cell: True/False when the labels judged it, None when they cannot."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _flag(value: Any) -> bool:
    """A boolean column cell that may be missing, NA or NaN (older reports lack the column)."""
    return _verdict(value) is True


class _GroupIndex:
    """Which group each (region, sku) joined, to say why a pair was refused by the group rule."""

    def __init__(self, groups: pd.DataFrame) -> None:
        self.group_of: dict[tuple[str, str], str] = {}
        self.members: dict[str, list[tuple[str, str]]] = {}
        if {"group_id", "region", "sku"} <= set(groups.columns):
            for gid, region, sku in groups[["group_id", "region", "sku"]].astype(str).itertuples(index=False):
                self.group_of[(region, sku)] = gid
                self.members.setdefault(gid, []).append((region, sku))

    def _side(self, node: tuple[str, str]) -> list[tuple[str, str]]:
        gid = self.group_of.get(node)
        return self.members.get(gid, [node]) if gid is not None else [node]

    def clash(self, ra: str, sa: str, rb: str, sb: str) -> str | None:
        """Why linking the two would break "one SKU per region in a group", or None if it would not."""
        left, right = self._side((ra, sa)), self._side((rb, sb))
        if set(left) & set(right):
            return None
        by_region = dict(left)
        parts = [
            f"{region} {by_region[region]} vs {sku}"
            for region, sku in right
            if region in by_region and by_region[region] != sku
        ]
        if not parts:
            return None
        return "refused by the group rule: linking them would put two SKUs of one region in a group (" + (
            "; ".join(parts) + ")"
        )


def _pair_view(
    row: Mapping[str, Any], evidence_cols: Sequence[str], groups: _GroupIndex | None = None
) -> dict[str, Any]:
    text_a, cut_a = _truncate(row.get("text_a"), TEXT_LIMIT)
    text_b, cut_b = _truncate(row.get("text_b"), TEXT_LIMIT)
    seg_a, seg_b = diff_segments(text_a, text_b)
    decision = _as_text(row.get("decision"))
    evidence = []
    for col in evidence_cols:
        value = _as_float(row.get(col))
        if value is None:
            continue
        is_conflict = str(col).startswith("conflict_")
        evidence.append(
            {
                "name": str(col),
                "value": value,
                "kind": "conflict" if is_conflict and value else ("pos" if value else "zero"),
                # A conflict column at 0 is no evidence at all; showing it as "conflict 0.00" misled.
                "show": bool(value) or not is_conflict,
            }
        )
    conflict = None
    if decision == "conflict" and groups is not None:
        conflict = groups.clash(
            _as_text(row.get("region_a")),
            _as_text(row.get("sku_a")),
            _as_text(row.get("region_b")),
            _as_text(row.get("sku_b")),
        )
    return {
        "region_a": _as_text(row.get("region_a")),
        "sku_a": _as_text(row.get("sku_a")),
        "region_b": _as_text(row.get("region_b")),
        "sku_b": _as_text(row.get("sku_b")),
        "score": row.get("score"),
        "cosine": row.get("cosine"),
        "sentences": _as_float(row.get("sentences")),  # None when matched without sentence vectors
        "decision": decision,
        "decision_label": DECISION_LABELS.get(decision, decision or "unknown"),
        # Only known decisions become CSS classes; anything else gets the neutral style.
        "decision_css": decision if decision in DECISIONS else "other",
        "explain": _clean_explain(row.get("explain")),
        "conflict": conflict,
        "correct": _verdict(row.get("correct")),
        "ambiguous": _flag(row.get("ambiguous")),
        "segments_a": seg_a,
        "segments_b": seg_b,
        "cut_a": cut_a,
        "cut_b": cut_b,
        "evidence": evidence,
    }


def _nearest(
    pairs: pd.DataFrame, score: np.ndarray, mask: np.ndarray, n: int, *, ascending: bool
) -> pd.DataFrame:
    """The first ``n`` ``mask``ed rows of ``pairs`` by ``score`` (stable: ties in row order, missing
    scores last), a slice of rows at a time against the best so far: sorting every masked score
    held ~50 B a pair (+0.6 GB at 12.5 M pairs, the page's peak, #26)."""
    n = max(n, 0)
    best_rows, best_keys = np.empty(0, np.int64), np.empty(0, np.float64)
    for lo in range(0, len(score), _CODE_SLICE):
        rows = lo + np.flatnonzero(mask[lo : lo + _CODE_SLICE])
        keys = score[rows] if ascending else -score[rows]  # NaN stays NaN, and sorts last
        rows, keys = np.concatenate([best_rows, rows]), np.concatenate([best_keys, keys])
        order = np.lexsort((rows, keys))[:n]  # by key, then by row
        best_rows, best_keys = rows[order], keys[order]
    return pairs.iloc[best_rows]


def _sample_pairs(pairs: pd.DataFrame, size: int, groups: pd.DataFrame | None = None) -> dict[str, Any]:
    """The pairs a reviewer learns most from: accepted and rejected pairs nearest the threshold.

    Borderline decisions are where the matcher is most likely wrong, so they beat a random sample.
    Conflicts are shown apart because they explain the variants the matcher refused.
    """
    empty = {"accepted": [], "rejected": [], "conflicts": []}
    if not len(pairs) or "decision" not in pairs.columns:
        return empty
    evidence_cols = _evidence_columns(pairs)
    score = (
        pd.to_numeric(pairs["score"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        if "score" in pairs.columns
        else np.full(len(pairs), np.nan)
    )
    decision = pairs["decision"]
    per_group = max(1, size // 3)
    accepted = _nearest(pairs, score, (decision == "match").to_numpy(), per_group, ascending=True)
    conflicts = _nearest(pairs, score, (decision == "conflict").to_numpy(), per_group, ascending=False)
    rejected = _nearest(
        pairs,
        score,
        ~decision.isin(["match", "conflict"]).to_numpy(),
        size - len(accepted) - len(conflicts),
        ascending=False,
    )

    index = _GroupIndex(groups if groups is not None else pd.DataFrame())

    def views(df: pd.DataFrame) -> list[dict[str, Any]]:
        return [_pair_view(row, evidence_cols, index) for row in df.to_dict("records")]

    return {"accepted": views(accepted), "rejected": views(rejected), "conflicts": views(conflicts)}


def _ambiguous(pairs: pd.DataFrame) -> dict[str, Any]:
    """Accepted matches that only a tie decided (``ambiguous`` column, when the matcher wrote it)."""
    if "ambiguous" not in pairs.columns or "decision" not in pairs.columns:
        return {"rows": [], "total": 0}
    column = pairs["ambiguous"]
    flags = column if column.dtype == bool else column.map(_flag).astype(bool)
    chosen = pairs[flags.to_numpy() & (pairs["decision"] == "match").to_numpy()]
    rows = [
        {
            "region_a": _as_text(r.get("region_a")),
            "sku_a": _as_text(r.get("sku_a")),
            "region_b": _as_text(r.get("region_b")),
            "sku_b": _as_text(r.get("sku_b")),
            "score": r.get("score"),
            "explain": _clean_explain(r.get("explain")),
        }
        for r in chosen.head(AMBIGUOUS_LIMIT).to_dict("records")
    ]
    return {"rows": rows, "total": len(chosen)}


def _duplicates(result: MatchResult, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """Sets of SKUs of one region with identical text (``MatchResult.duplicates``), or None when the
    run did not look for them (older reports)."""
    frame = getattr(result, "duplicates", None)
    if not isinstance(frame, pd.DataFrame) or not {"region", "listing", "sku"} <= set(frame.columns):
        return None
    sets = []
    for (region, listing), grp in frame.groupby(["region", "listing"], sort=True, observed=True):
        skus = sorted(grp["sku"].astype(str))
        text, cut = _truncate(grp["text"].iloc[0] if "text" in grp.columns else "", UNMATCHED_TEXT_LIMIT)
        sets.append({"region": str(region), "listing": str(listing), "skus": skus, "text": text, "cut": cut})
    total_skus = _as_float(summary.get("counts_duplicates"))
    return {
        "sets": sets[:DUPLICATE_SETS_LIMIT],
        "n_sets": len(sets),
        "n_skus": int(total_skus) if total_skus is not None else len(frame),
    }


def _flatten(value: Any, prefix: str = "") -> list[dict[str, str]]:
    """Nested dict -> ``[{"key": "a.b", "value": "..."}]`` rows, values as display text."""
    if isinstance(value, Mapping):
        rows: list[dict[str, str]] = []
        for key, inner in value.items():
            rows.extend(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return rows
    if isinstance(value, list | tuple):
        return [{"key": prefix, "value": ", ".join(_as_text(v) for v in value)}]
    return [{"key": prefix, "value": _as_text(value)}]


def _unmatched(unmatched: pd.DataFrame, regions: Sequence[str]) -> dict[str, Any]:
    """Unmatched products by region, nearest misses first, capped at UNMATCHED_LIMIT rows."""
    total = len(unmatched)
    if not total or not {"region", "sku"} <= set(unmatched.columns):
        return {"rows": [], "total": total, "by_region": [], "reasons": False}
    position = {r: i for i, r in enumerate(regions)}
    frame = unmatched.assign(
        _pos=unmatched["region"].astype(str).map(lambda r: position.get(r, len(position))),
        _score=pd.to_numeric(unmatched.get("best_score"), errors="coerce")
        if "best_score" in unmatched.columns
        else np.nan,
    ).sort_values(["_pos", "_score"], ascending=[True, False], kind="stable", na_position="last")
    rows = []
    for row in frame.head(UNMATCHED_LIMIT).to_dict("records"):
        text, cut = _truncate(row.get("text"), UNMATCHED_TEXT_LIMIT)
        rows.append(
            {
                "region": _as_text(row.get("region")),
                "sku": _as_text(row.get("sku")),
                "text": text,
                "cut": cut,
                "best_score": row.get("best_score"),
                "best_region": _as_text(row.get("best_region")),
                "best_sku": _as_text(row.get("best_sku")),
                "reason": _as_text(row.get("reason")),
            }
        )
    counts = unmatched["region"].astype(str).value_counts()
    by_region = [{"region": r, "count": int(counts.get(r, 0))} for r in regions if counts.get(r, 0)]
    return {"rows": rows, "total": total, "by_region": by_region, "reasons": "reason" in unmatched.columns}


def _group_sizes(groups: pd.DataFrame) -> list[dict[str, int]]:
    if not len(groups) or "group_id" not in groups.columns:
        return []
    sizes = groups.groupby("group_id").size().value_counts().sort_index(ascending=False)
    return [{"size": int(size), "groups": int(count)} for size, count in sizes.items()]


def _timings(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    timings = summary.get("timings")
    if not isinstance(timings, Mapping):
        return []
    rows = [{"stage": str(k), "seconds": _as_float(v)} for k, v in timings.items()]
    total = sum(r["seconds"] or 0 for r in rows)
    for row in rows:
        row["share"] = (row["seconds"] or 0) / total if total else 0
    return rows


def build_context(
    result: MatchResult,
    *,
    run_id: str | None = None,
    generated_at: datetime | None = None,
    sample_size: int = 30,
) -> dict[str, Any]:
    """Everything the template shows, as plain values: the template only lays it out.

    Keeping the arithmetic here keeps the template free of logic that could mishandle raw text.
    """
    summary = result.summary if isinstance(result.summary, Mapping) else {}
    threshold = _as_float(summary.get("threshold"))
    products = _products_per_region(result)
    regions = _region_order(summary, products)
    pair_rows = _pair_counts(result, regions)
    metrics = summary.get("metrics") if isinstance(summary.get("metrics"), Mapping) else {}
    overall = metrics.get("overall") if isinstance(metrics.get("overall"), Mapping) else None
    pairs = result.pairs
    n_matches = int((pairs["decision"] == "match").sum()) if "decision" in pairs.columns else 0
    decisions = (
        [
            {"decision": d, "label": DECISION_LABELS.get(str(d), str(d)), "count": int(c)}
            for d, c in _decision_counts(pairs["decision"], result.rest).items()
            if c
        ]
        if "decision" in pairs.columns
        else []
    )
    generated = generated_at or datetime.now(UTC)
    return {
        "title": "Cross-region match report",
        "run_id": run_id if run_id is not None else summary.get("run_id"),
        "generated_at": generated.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
        "model": summary.get("model"),
        "collection": summary.get("collection"),
        "threshold": threshold,
        "mode": summary.get("mode"),
        "full_run_reason": _as_text(summary.get("full_run_reason")),
        "incremental": summary.get("incremental"),
        "regions": regions,
        "products": [{"region": r, "count": products.get(r, 0)} for r in regions],
        "total_products": sum(products.values()),
        "pair_counts": pair_rows,
        "n_pairs": result.pair_count,
        "n_matches": n_matches,
        "decisions": decisions,
        "n_groups": int(result.groups["group_id"].nunique()) if "group_id" in result.groups.columns else 0,
        "group_sizes": _group_sizes(result.groups),
        "n_unmatched": len(result.unmatched),
        "matrix": _matrix(regions, pair_rows, products),
        "histogram": _histogram(pairs, threshold, result.rest),
        "labelled": bool(metrics),
        "overall": _metric_values(overall) if overall else None,
        "metric_rows": _metric_rows(metrics),
        "pr": _pr_chart(metrics, threshold),
        "sweep": _sweep_rows(metrics, threshold),
        "samples": _sample_pairs(pairs, sample_size, result.groups),
        "ambiguous": _ambiguous(pairs),
        "duplicates": _duplicates(result, summary),
        "reproducibility": _flatten(summary["reproducibility"])
        if isinstance(summary.get("reproducibility"), Mapping)
        else [],
        "labels_note": _as_text(summary.get("labels_note")),
        "review": summary.get("review"),
        # Fixed names the writer uses (no data in hrefs); duplicates.parquet only where the run has it.
        "data_files": [
            "pairs.parquet",
            "groups.parquet",
            "unmatched.parquet",
            *(
                ["duplicates.parquet"]
                if isinstance(getattr(result, "duplicates", None), pd.DataFrame)
                else []
            ),
            "summary.json",
        ],
        "evidence_columns": _evidence_columns(pairs),
        "unmatched": _unmatched(result.unmatched, regions),
        "timings": _timings(summary),
        "text_limit": TEXT_LIMIT,
        "changes": _changes(result, summary),
    }


#: How each kind of change reads in the report (docs/MATCH_STATE.md).
CHANGE_LABELS = {
    "new_match": "joined an existing group",
    "broken_match": "left its group (the group goes on)",
    "moved": "moved to another group",
    "new_group": "in a newly formed group",
    "dissolved": "its group dissolved",
}
CHANGE_ROWS_SHOWN = 200


def _changes(result: MatchResult, summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The "changes since the last run" section; None when the run wrote no match state."""
    counts = summary.get("changes")
    if not isinstance(counts, Mapping):
        return None
    state = summary.get("match_state") if isinstance(summary.get("match_state"), Mapping) else {}
    frame = result.changes
    rows = [
        {"region": r, "sku": s, "old": o, "new": n, "kind": k, "label": CHANGE_LABELS.get(str(k), str(k))}
        for r, s, o, n, k in frame.head(CHANGE_ROWS_SHOWN).itertuples(index=False)
    ]
    return {
        "previous_run": state.get("previous_run"),
        "counts": [
            {"kind": k, "label": CHANGE_LABELS.get(str(k), str(k)), "count": int(c)}
            for k, c in counts.items()
        ],
        "total": len(frame),
        "rows": rows,
    }


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    """One Jinja2 environment with autoescape forced on.

    ``select_autoescape(["html"])`` would NOT escape here: the template is named ``*.html.j2``.
    """
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = fmt_num
    env.filters["int"] = fmt_int
    env.filters["seconds"] = fmt_seconds
    env.filters["pct"] = lambda v: "–" if _as_float(v) is None else f"{100 * _as_float(v):.0f}%"
    return env


def render_html(
    result: MatchResult,
    *,
    run_id: str | None = None,
    generated_at: datetime | None = None,
    sample_size: int = 30,
) -> str:
    """Render the self-contained report page for one match run.

    Args:
        result (MatchResult): the run to report on.
        run_id (str | None): shown in the header. Defaults to ``summary["run_id"]`` if present.
        generated_at (datetime | None): shown in the header. Defaults to now (UTC).
        sample_size (int): pairs shown side by side, split between accepted, conflicting and
            rejected pairs nearest the threshold. Defaults to 30. A result that holds only some
            pairs (``result.rest``) holds the 64 rejected pairs nearest the threshold
            (:data:`.matching.held_pairs.HELD_SAMPLE`); a sample asking for more rejected pairs
            takes the rest of them from the held pairs only.

    Returns:
        str: a complete HTML document with inline CSS and SVG; it loads nothing from anywhere.
    """
    context = build_context(result, run_id=run_id, generated_at=generated_at, sample_size=sample_size)
    return _environment().get_template(TEMPLATE_NAME).render(**context)
