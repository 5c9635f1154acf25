"""The next match run honours reviewed decisions (docs/REVIEW.md): must-links, cannot-links, lapse."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from polyglot_catalog.matching.blocks import PairBlock
from polyglot_catalog.matching.data import RegionTable
from polyglot_catalog.matching.pipeline import match_catalog
from polyglot_catalog.review.apply import check_decisions, reviewed_threshold
from polyglot_catalog.review.store import text_hash


def _catalog(seed: int = 0, n: int = 30) -> dict[str, RegionTable]:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 16))
    out = {}
    for region, word in (("DE", "Regal"), ("US", "shelf")):
        vec = base + 0.5 * rng.normal(size=(n, 16))
        texts = [f"KALLAX {word} {40 + i} cm" for i in range(n)]
        out[region] = RegionTable(region, [f"{region.lower()}{i}" for i in range(n)], texts, vec)
    return out


def _pair(res: pd.DataFrame, sa: str, sb: str) -> pd.Series:
    hit = res[(res["sku_a"] == sa) & (res["sku_b"] == sb)]
    assert len(hit) == 1, f"{sa}-{sb} not among the candidates"
    return hit.iloc[0]


def test_accepted_and_rejected_pairs_override_the_matcher() -> None:
    data = _catalog()
    before = match_catalog(data, k=3, sentences=None)
    matched = before.pairs[before.pairs["decision"] == "match"]
    assert _pair(matched, "de1", "us1")["decision"] == "match"
    decisions = pd.DataFrame(
        [
            ("DE", "de1", "US", "us1", "no_match"),  # a right match, rejected
            ("US", "us2", "DE", "de5", "match"),  # a wrong pair, accepted (given in reverse order)
        ],
        columns=["region_a", "sku_a", "region_b", "sku_b", "decision"],
    )
    after = match_catalog(data, k=3, sentences=None, decisions=decisions)
    rejected = _pair(after.pairs, "de1", "us1")
    assert rejected["decision"] != "match" and rejected["score"] == 0.0
    forced = _pair(after.pairs, "de5", "us2")
    assert forced["decision"] == "match" and forced["score"] == 1.0
    assert "reviewed: match" in forced["explain"]
    m = after.pairs[after.pairs["decision"] == "match"]
    assert not m.duplicated(["sku_a"]).any() and not m.duplicated(["sku_b"]).any()  # still one-to-one
    review = after.summary["review"]
    assert review["applied_match"] == 1 and review["applied_no_match"] == 1 and review["lapsed"] == 0
    assert after.summary["reproducibility"]["parameters"]["decisions"] == 2


def test_a_decision_lapses_when_a_text_changes_and_unknown_skus_are_counted() -> None:
    data = _catalog()
    decisions = pd.DataFrame(
        [
            ("DE", "de1", "US", "us1", "no_match", text_hash("an older text"), None),
            (
                "DE",
                "de2",
                "US",
                "us2",
                "no_match",
                text_hash(data["DE"].texts[2]),
                text_hash(data["US"].texts[2]),
            ),
            ("DE", "gone", "US", "us3", "match", None, None),
        ],
        columns=["region_a", "sku_a", "region_b", "sku_b", "decision", "hash_a", "hash_b"],
    )
    res = match_catalog(data, k=3, sentences=None, decisions=decisions)
    assert _pair(res.pairs, "de1", "us1")["decision"] == "match"  # lapsed: the matcher decides again
    assert _pair(res.pairs, "de2", "us2")["decision"] != "match"
    assert (res.summary["review"]["lapsed"], res.summary["review"]["unknown_sku"]) == (1, 1)


def test_bad_decisions_name_the_row() -> None:
    frame = pd.DataFrame(
        [("DE", "a", "US", "b", "match"), ("DE", "a", "US", "c", "yes")],
        columns=["region_a", "sku_a", "region_b", "sku_b", "decision"],
    )
    with pytest.raises(ValueError, match="row 1: decision 'yes'"):
        check_decisions(frame)
    with pytest.raises(ValueError, match=r"lack columns \['decision'\]"):
        check_decisions(frame.drop(columns="decision"))
    same = frame.assign(region_b="DE", decision="match")
    with pytest.raises(ValueError, match="row 0: both products are in region 'DE'"):
        check_decisions(same)


def test_the_reviewed_cut_moves_to_the_reviewed_boundary_only_with_enough_reviews() -> None:
    score = np.array([0.30, 0.35, 0.40, 0.45, 0.55, 0.60, 0.65, 0.70, 0.9])
    verdict = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.int8)
    blocks = [PairBlock("DE", "US", score=score, reviewed=verdict)]
    assert reviewed_threshold(blocks, 0.4) == pytest.approx(0.575)  # 3 reviewed pairs fixed
    assert reviewed_threshold(blocks, 0.5) == 0.5  # one fixed pair is not enough to move every other
    few = [
        PairBlock("DE", "US", score=score, reviewed=np.where(np.arange(9) < 6, verdict, -1).astype(np.int8))
    ]
    assert reviewed_threshold(few, 0.4) == 0.4


def test_wilson_interval_and_the_estimate_from_the_samples() -> None:
    from polyglot_catalog.review.estimate import estimate_quality, wilson

    p, lo, hi = wilson(8, 10)
    assert (p, round(lo, 3), round(hi, 3)) == (0.8, 0.49, 0.943)
    assert wilson(0, 5)[1] == 0.0 and wilson(5, 5)[2] == 1.0
    rows = [("sample_match", "match")] * 18 + [("sample_match", "no_match")] * 2
    rows += [("sample_rejected", "match")] * 1 + [("sample_rejected", "no_match")] * 19
    rows += [("uncertain", "no_match")] * 30  # chosen for doubt: never in the estimate
    frame = pd.DataFrame(rows, columns=["stratum", "decision"])
    frame["stratum_size"] = [
        100 if s == "sample_match" else 900 if s == "sample_rejected" else None for s in frame["stratum"]
    ]
    est = estimate_quality(frame)
    assert est["precision"]["value"] == 0.9 and est["precision"]["reviewed"] == 20
    assert est["precision"]["low"] < 0.9 < est["precision"]["high"]
    assert est["recall"]["value"] == round(90 / (90 + 45), 4)
    assert est["recall"]["low"] < est["recall"]["value"] < est["recall"]["high"]
    assert estimate_quality(frame[frame["stratum"] == "uncertain"]) is None
    rest = pd.DataFrame({"stratum": ["sample_rest"] * 10, "decision": ["match"] + ["no_match"] * 9})
    with_rest = estimate_quality(pd.concat([frame, rest.assign(stratum_size=9000)], ignore_index=True))
    assert with_rest["recall"]["value"] == round(90 / (90 + 45 + 900), 4)  # strata combined by size
    assert with_rest["recall"]["reviewed"] == 30


def test_the_report_shows_reviewed_counts_and_the_estimate(tmp_path) -> None:
    from polyglot_catalog.reports import write_reports

    data = _catalog()
    rows = [("DE", f"de{i}", "US", f"us{i}", "match", "sample_match", 30) for i in range(8)]
    rows += [("DE", "de9", "US", "us9", "no_match", "sample_match", 30)]
    decisions = pd.DataFrame(
        rows, columns=["region_a", "sku_a", "region_b", "sku_b", "decision", "stratum", "stratum_size"]
    )
    res = match_catalog(data, k=3, sentences=None, decisions=decisions)
    assert res.summary["review"]["estimate"]["precision"]["reviewed"] == 9
    html = (write_reports(tmp_path / "run", res) / "report.html").read_text()
    assert "Reviewed decisions" in html and "8 applied as matches" in html
    assert "precision <b>0.889</b>" in html
