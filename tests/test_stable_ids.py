"""Stable group ids (docs/MATCH_STATE.md): keep, merge, split, dissolve, new, never reuse."""

from __future__ import annotations

import pytest

from polyglot_catalog.matching.stable_ids import assign_stable_ids, format_group_id, group_number

US1, US2, US3 = ("US", "1"), ("US", "2"), ("US", "3")
DE1, DE2, DE3 = ("DE", "1"), ("DE", "2"), ("DE", "3")
FR1, FR2 = ("FR", "1"), ("FR", "2")


def test_first_run_numbers_groups_in_the_order_given_from_the_counter() -> None:
    ids, nxt = assign_stable_ids({}, [[US1, DE1], [US2, DE2]], 1)
    assert ids == ["g000001", "g000002"]
    assert nxt == 3


def test_a_group_keeps_its_id_when_it_gains_or_loses_members() -> None:
    previous = {US1: "g000007", DE1: "g000007", FR1: "g000007"}
    ids, _ = assign_stable_ids(previous, [[US1, DE1], [US2, DE2]], 8)
    assert ids == ["g000007", "g000008"]
    ids, _ = assign_stable_ids(previous, [[US1, DE1, FR1, ("JP", "1")]], 8)
    assert ids == ["g000007"]


def test_a_merge_keeps_the_oldest_id_and_retires_the_other() -> None:
    previous = {US1: "g000005", DE1: "g000005", FR1: "g000002", ("JP", "9"): "g000002"}
    ids, nxt = assign_stable_ids(previous, [[US1, DE1, FR1, ("JP", "9")]], 6)
    assert ids == ["g000002"]
    # the retired g000005 is never handed out again: the next new group gets g000006
    ids, _ = assign_stable_ids({US1: "g000002", DE1: "g000002"}, [[US1, DE1], [US2, DE2]], nxt)
    assert ids == ["g000002", "g000006"]


def test_a_split_keeps_the_id_for_the_larger_part() -> None:
    previous = {m: "g000003" for m in (US1, DE1, FR1, US2, DE2)}
    ids, nxt = assign_stable_ids(previous, [[US2, DE2], [US1, DE1, FR1]], 4)
    assert ids == ["g000004", "g000003"]
    assert nxt == 5


def test_a_split_into_equal_parts_keeps_the_id_for_the_part_with_the_lowest_member() -> None:
    previous = {m: "g000003" for m in (US1, DE1, US2, DE2)}
    ids, _ = assign_stable_ids(previous, [[US2, DE2], [US1, DE1]], 4)
    # ("DE", "1") is the lowest (region, sku) of the old group: its part keeps the id
    assert ids == ["g000004", "g000003"]


def test_a_split_whose_larger_part_merged_into_an_older_group_passes_the_id_to_the_next_part() -> None:
    previous = {US1: "g000001", DE1: "g000001", US2: "g000004", DE2: "g000004", FR2: "g000004"}
    previous.update({US3: "g000004", DE3: "g000004"})
    # g000004's larger part (US2, DE2, FR2) joins g000001's members; its other part keeps g000004
    ids, _ = assign_stable_ids(previous, [[US1, DE1, US2, DE2, FR2], [US3, DE3]], 5)
    assert ids == ["g000001", "g000004"]


def test_a_dissolved_id_is_not_reused_even_when_the_counter_was_lost() -> None:
    previous = {US1: "g000009", DE1: "g000009"}
    ids, nxt = assign_stable_ids(previous, [[US2, DE2]], 1)
    assert ids == ["g000010"]
    assert nxt == 11


def test_unknown_id_format_is_a_clear_error() -> None:
    assert group_number(format_group_id(42)) == 42
    assert format_group_id(1_234_567) == "g1234567"
    with pytest.raises(ValueError, match="'grp-1' is not of the form"):
        assign_stable_ids({US1: "grp-1"}, [[US1, DE1]], 1)
