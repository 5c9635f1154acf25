"""Reviewed decisions to and from files: the labels Parquet ``--labels`` / ``--reviewed`` accept,
and the pair form a spreadsheet of decisions comes in.

Two forms (docs/REVIEW.md):

- group form ``region, sku, group_id``: products sharing a group id are the same product; read as
  ``match`` decisions between every two of its products in different regions;
- pair form ``region_a, sku_a, region_b, sku_b, decision`` with ``match`` / ``no_match``: lossless.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pandas as pd

from .apply import REQUIRED, check_decisions

GROUP_COLUMNS = ["region", "sku", "group_id"]
PAIR_COLUMNS = list(REQUIRED)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ValueError(f"decisions file {str(path)!r} does not exist")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    raise ValueError(f"decisions file {str(path)!r}: expected .parquet or .csv")


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def read_decisions(path: str | Path) -> pd.DataFrame:
    """The file's decisions in pair form (canonical order), or a ValueError naming file and row."""
    path = Path(path)
    table = _read_table(path)
    if set(PAIR_COLUMNS) <= set(table.columns):
        for n, row in enumerate(table[PAIR_COLUMNS].itertuples(index=False)):
            if any(_blank(v) for v in row):
                raise ValueError(f"{path.name} row {n}: empty value in {PAIR_COLUMNS}")
        try:
            return check_decisions(table)
        except ValueError as e:
            raise ValueError(f"{path.name}: {e}") from None
    if set(GROUP_COLUMNS) <= set(table.columns):
        members: dict[str, list[tuple[str, str]]] = {}
        for n, (region, sku, group) in enumerate(table[GROUP_COLUMNS].itertuples(index=False)):
            if _blank(region) or _blank(sku):
                raise ValueError(f"{path.name} row {n}: region and sku must not be empty")
            if _blank(group):
                continue  # an unlabelled product
            members.setdefault(str(group), []).append((str(region), str(sku)))
        rows = [
            (ra, sa, rb, sb, "match")
            for group in members.values()
            for (ra, sa), (rb, sb) in itertools.combinations(sorted(set(group)), 2)
            if ra != rb
        ]
        return check_decisions(pd.DataFrame(rows, columns=PAIR_COLUMNS))
    raise ValueError(
        f"{path.name}: columns {list(table.columns)} are neither the group form {GROUP_COLUMNS} "
        f"nor the pair form {PAIR_COLUMNS}"
    )


def decisions_to_groups(decisions: pd.DataFrame) -> pd.DataFrame:
    """Group form of the ``match`` decisions: connected products share a ``group_id`` (``r000001``,
    ... in product order); ``no_match`` decisions have no place in it (use the pair form)."""
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    matches = decisions[decisions["decision"] == "match"]
    for ra, sa, rb, sb in matches[["region_a", "sku_a", "region_b", "sku_b"]].itertuples(index=False):
        a, b = find((str(ra), str(sa))), find((str(rb), str(sb)))
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = sorted({find(x) for x in parent})
    ids = {root: f"r{n:06d}" for n, root in enumerate(roots, 1)}
    rows = sorted((r, s, ids[find((r, s))]) for r, s in parent)
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def write_decisions(decisions: pd.DataFrame, out: str | Path, form: str = "group") -> Path:
    """Write ``decisions`` as a Parquet file in ``form`` (``group``: labels; ``pairs``: lossless),
    through a temporary file, so a failed write leaves no partial file."""
    if form not in ("group", "pairs"):
        raise ValueError(f"form must be 'group' or 'pairs'; got {form!r}")
    out = Path(out)
    table = decisions_to_groups(decisions) if form == "group" else decisions
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return out
