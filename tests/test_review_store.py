"""Review decisions in Qdrant (docs/REVIEW.md): decide, undo, audit, lapse hashes, claims."""

from __future__ import annotations

from typing import Any

import pytest

from polyglot_catalog.review import Pair, ReviewStore, review_collection


@pytest.fixture
def review(qdrant_client: Any) -> ReviewStore:
    return ReviewStore(qdrant_client, "cat")


def test_a_decision_is_stored_in_canonical_order_with_reviewer_and_audit(review: ReviewStore) -> None:
    pair = Pair.of("US", "u1", "DE", "d1")
    assert pair.fields() == {"region_a": "DE", "sku_a": "d1", "region_b": "US", "sku_b": "u1"}
    review.decide(pair, "match", "alice", hash_a="h1", hash_b="h2", stratum="uncertain")
    review.decide(pair, "no_match", "bob")
    frame = review.decisions()
    assert frame[["sku_a", "sku_b", "decision", "reviewer"]].values.tolist() == [
        ["d1", "u1", "no_match", "bob"]
    ]
    audit = review.audit(pair)
    assert audit[["reviewer", "before", "after"]].values.tolist() == [
        ["alice", None, "match"],
        ["bob", "match", "no_match"],
    ]
    assert review.client.collection_exists(review_collection("cat"))


def test_undo_restores_the_previous_decision_and_is_audited(review: ReviewStore) -> None:
    pair = Pair.of("DE", "d1", "US", "u1")
    review.decide(pair, "match", "alice", hash_a="h1", hash_b="h2")
    review.decide(pair, "no_match", "alice")
    assert review.undo(pair, "alice")["decision"] == "match"
    assert review.get(pair)["hash_a"] == "h1"
    review.undo(pair, "alice")  # undoes the undo: back to no_match
    assert review.get(pair)["decision"] == "no_match"
    first = Pair.of("DE", "d2", "US", "u2")
    review.decide(first, "match", "alice")
    assert review.undo(first, "alice") is None
    assert review.get(first) is None and len(review.decisions()) == 1
    assert review.audit(first)["action"].tolist() == ["decide", "undo"]


def test_bad_decision_and_empty_undo_say_what_is_wrong(review: ReviewStore) -> None:
    pair = Pair.of("DE", "d1", "US", "u1")
    with pytest.raises(ValueError, match="decision must be one of"):
        review.decide(pair, "maybe", "alice")
    with pytest.raises(ValueError, match="nothing to undo"):
        review.undo(pair, "alice")
    with pytest.raises(ValueError, match="two products"):
        Pair.of("DE", "d1", "DE", "d1")


def test_two_reviewers_never_hold_the_same_pair(review: ReviewStore) -> None:
    pair = Pair.of("DE", "d1", "US", "u1")
    assert review.claim(pair, "alice")
    assert not review.claim(pair, "bob")
    assert review.claimed_by_others("bob") == {pair.key}
    assert review.claimed_by_others("alice") == set()
    review.decide(pair, "match", "alice")  # deciding releases the claim
    assert review.claim(pair, "bob")


def test_an_expired_claim_can_be_taken_over(qdrant_client: Any) -> None:
    review = ReviewStore(qdrant_client, "cat", claim_ttl=-1.0)
    pair = Pair.of("DE", "d1", "US", "u1")
    assert review.claim(pair, "alice")
    assert review.claim(pair, "bob")


def test_a_skipped_pair_stays_aside_for_its_reviewer_and_undo_finds_the_last_decision(
    review: ReviewStore,
) -> None:
    first, second = Pair.of("DE", "d1", "US", "u1"), Pair.of("DE", "d2", "US", "u2")
    assert review.claim(first, "alice")
    review.skip(first, "alice")
    assert review.skipped_by("alice") == {first.key} and review.skipped_by("bob") == set()
    assert review.last_decided("alice") is None
    review.decide(second, "match", "alice")
    review.decide(first, "no_match", "bob")
    assert review.last_decided("alice") == second and review.last_decided("bob") == first
