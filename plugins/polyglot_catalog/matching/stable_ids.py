"""Group ids that survive from one match run to the next (docs/MATCH_STATE.md).

Why: the group stage numbers its groups afresh every run, so ``g000042`` meant another product each
night and a downstream system keyed on it would re-sync everything. This module is a pure function
from the previous run's ids and this run's groups to ids that follow the groups:

1. a group keeps its id while it keeps members (a member added or lost does not change it);
2. new ids come from a counter that only grows: an id is never reused, not even a dissolved one's;
3. a merge keeps the oldest id (the lowest number) among the merged groups;
4. a split keeps the id for the part that holds most of the old group's members; on a tie, the part
   that holds the lowest ``(region, sku)`` of them. The other parts get new ids.

Old ids are handed out oldest first, each to the not yet labelled group that holds most of its
members, so a group whose larger part already kept an older id (a split whose larger half merged
elsewhere) passes its id on to its next part rather than losing it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

Member = tuple[str, str]  # (region, sku)

GROUP_ID_PREFIX = "g"
_ID_RE = re.compile(rf"^{GROUP_ID_PREFIX}(\d+)$")


def format_group_id(number: int) -> str:
    """``g000001``: at least six digits, so ids sort by age as strings up to a million groups."""
    return f"{GROUP_ID_PREFIX}{number:06d}"


def group_number(group_id: str) -> int:
    """The counter value of an id made by :func:`format_group_id`.

    Raises:
        ValueError: the id was not made by this module (a hand-edited payload, another tool).
    """
    found = _ID_RE.match(str(group_id))
    if found is None:
        raise ValueError(f"group id {group_id!r} is not of the form {GROUP_ID_PREFIX}NNNNNN")
    return int(found.group(1))


def assign_stable_ids(
    previous: Mapping[Member, str],
    groups: Sequence[Iterable[Member]],
    next_number: int,
) -> tuple[list[str], int]:
    """Stable ids for this run's ``groups``.

    Args:
        previous: ``(region, sku) -> group id`` of the last committed run (members without a group are
            simply absent).
        groups: this run's groups, each an iterable of ``(region, sku)``; disjoint.
        next_number: the state's counter: the lowest number never handed out.

    Returns:
        ``(ids, next_number)``: one id per group, in the order given, and the new counter (at least
        one above every old and new id, so ids stay unique even if the counter was lost).

    Raises:
        ValueError: an old id not made by :func:`format_group_id`.
    """
    parts = [sorted(set(g)) for g in groups]
    # per old id: how many of its members each new group holds, and the lowest such member
    overlap: dict[str, dict[int, tuple[int, Member]]] = {}
    for gi, members in enumerate(parts):
        for m in members:
            old = previous.get(m)
            if old is None:
                continue
            count, lowest = overlap.setdefault(old, {}).get(gi, (0, m))
            overlap[old][gi] = (count + 1, min(lowest, m))
    ids: list[str | None] = [None] * len(parts)
    counter = max([next_number, *(group_number(g) + 1 for g in set(previous.values()))])
    for old in sorted(overlap, key=group_number):  # oldest first: a merge keeps the oldest
        best = [(-count, lowest, gi) for gi, (count, lowest) in overlap[old].items() if ids[gi] is None]
        if best:
            ids[min(best)[2]] = old  # most members, then the lowest member
    out: list[str] = []
    for gid in ids:
        if gid is None:
            gid = format_group_id(counter)
            counter += 1
        out.append(gid)
    return out, counter
