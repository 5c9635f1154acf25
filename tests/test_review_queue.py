"""The review queue (docs/REVIEW.md): strata, seeded samples, decided/held pairs left out, diffs."""

from __future__ import annotations

import pandas as pd
import pytest

from polyglot_catalog.review.diff import differences, highlight
from polyglot_catalog.review.queue import QUEUE_COLUMNS, build_queue, decided_keys
from polyglot_catalog.review.store import text_hash


def pairs_table() -> pd.DataFrame:
    rows = [
        # (sku_a, sku_b, score, decision, ambiguous)
        ("d1", "u1", 0.95, "match", False),
        ("d1", "u9", 0.93, "below_threshold", False),  # runner-up of d1 -> u1
        ("d2", "u2", 0.52, "match", False),  # just above the threshold
        ("d3", "u3", 0.48, "below_threshold", False),  # just below
        ("d4", "u4", 0.90, "conflict", False),
        ("d5", "u5", 0.80, "match", True),  # a tie decided it
        *((f"d{i}", f"u{i}", 0.99, "match", False) for i in range(10, 30)),
        *((f"d{i}", f"u{i + 100}", 0.05, "below_threshold", False) for i in range(10, 30)),
    ]
    frame = pd.DataFrame(rows, columns=["sku_a", "sku_b", "score", "decision", "ambiguous"])
    frame.insert(0, "region_a", "DE")
    frame.insert(2, "region_b", "US")
    frame["text_a"] = [f"Tisch {s} weiß 50 cm" for s in frame["sku_a"]]
    frame["text_b"] = [f"table {s} black 60 cm" for s in frame["sku_b"]]
    frame["explain"] = "numbers differ"
    return frame


def test_every_stratum_appears_with_its_pair_and_evidence() -> None:
    queue = build_queue(pairs_table(), 0.5, sample=3, uncertain=2)
    assert list(queue.columns) == QUEUE_COLUMNS
    by = {s: set(zip(g["sku_a"], g["sku_b"], strict=True)) for s, g in queue.groupby("stratum")}
    assert by["conflict"] == {("d4", "u4"), ("d5", "u5")}
    assert by["runner_up"] == {("d1", "u1")}
    assert queue.loc[queue["stratum"] == "runner_up", "rival_sku"].tolist() == ["u9"]
    sampled = by["sample_match"] | by["sample_rejected"]
    assert {("d2", "u2"), ("d3", "u3")} <= by["uncertain"] | sampled  # a sampled pair stays a sample
    assert len(by["sample_match"]) == 3 and len(by["sample_rejected"]) == 3
    assert not queue.duplicated(["region_a", "sku_a", "region_b", "sku_b"]).any()
    row = queue.iloc[0]
    assert "colours: white vs black" in row["differences"] and "50cm vs 60cm" in row["differences"]
    assert row["hash_a"] == text_hash(row["text_a"])


def test_the_sample_is_seeded_and_survives_reviews() -> None:
    pairs = pairs_table()
    first = build_queue(pairs, 0.5, sample=4)
    again = build_queue(pairs, 0.5, sample=4)
    pd.testing.assert_frame_equal(first, again)
    sampled = first[first["stratum"] == "sample_match"]
    done = next(iter(sampled[["region_a", "sku_a", "region_b", "sku_b"]].itertuples(index=False, name=None)))
    later = build_queue(pairs, 0.5, sample=4, decided={done})
    rest = later[later["stratum"] == "sample_match"]
    assert len(rest) == 3 and set(rest["sku_a"]) < set(sampled["sku_a"])
    other = build_queue(pairs, 0.5, sample=4, seed=7)
    assert not other.equals(first)


def test_held_pairs_are_left_out_and_a_changed_text_reopens_a_decision() -> None:
    pairs = pairs_table()
    held = build_queue(pairs, 0.5, held={("DE", "d4", "US", "u4")})
    assert ("d4", "u4") not in set(zip(held["sku_a"], held["sku_b"], strict=True))
    decisions = pd.DataFrame(
        [
            ("DE", "d1", "US", "u1", text_hash("Tisch d1 weiß 50 cm"), text_hash("table u1 black 60 cm")),
            ("DE", "d2", "US", "u2", text_hash("an older text"), text_hash("table u2 black 60 cm")),
        ],
        columns=["region_a", "sku_a", "region_b", "sku_b", "hash_a", "hash_b"],
    )
    assert decided_keys(decisions, pairs) == {("DE", "d1", "US", "u1")}


def test_bad_input_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="lacks columns"):
        build_queue(pairs_table().drop(columns="text_b"), 0.5)
    with pytest.raises(ValueError, match="threshold"):
        build_queue(pairs_table(), 1.5)


def test_differences_ignore_translation_and_flag_variants() -> None:
    assert differences("Chair, white, 1,5 kg", "Stuhl, weiß, 1.5kg") == {}
    diff = differences("Shirt size XL red ART-1234", "Hemd Größe L rot ART-1235")
    assert diff["sizes"] == (["XL"], ["L"]) and diff["codes"] == (["ART-1234"], ["ART-1235"])
    marked = [piece for piece, flag in highlight("Lamp 40 W <b>", "Lampe 60 W") if flag]
    assert marked == ["40 W"]


def test_round_robin_shows_every_stratum_early() -> None:
    from polyglot_catalog.review.queue import round_robin

    queue = round_robin(build_queue(pairs_table(), 0.5, sample=3))
    first = queue["stratum"].head(5).tolist()
    assert first == ["conflict", "runner_up", "uncertain", "sample_match", "sample_rejected"]


def test_rejected_pairs_are_sampled_among_each_products_best_candidates() -> None:
    pairs = pairs_table()
    extra = pairs.iloc[[0]].assign(sku_a="d10", sku_b="u11", score=0.01, decision="below_threshold")
    pairs = pd.concat([pairs, extra], ignore_index=True)  # neither product's best: d10-u10, d11-u11 are
    queue = build_queue(pairs, 0.5, sample=1000)
    rejected = queue[queue["stratum"] == "sample_rejected"]
    assert ("d10", "u11") not in set(zip(rejected["sku_a"], rejected["sku_b"], strict=True))
    assert len(rejected) == rejected["stratum_size"].iloc[0] == 23  # every other rejected pair
    rest = queue[queue["stratum"] == "sample_rest"]
    assert list(zip(rest["sku_a"], rest["sku_b"], strict=True)) == [("d10", "u11")]
