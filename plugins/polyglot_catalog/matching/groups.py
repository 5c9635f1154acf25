"""Product groups across regions: connected components of accepted pairs, with a region check.

Edges are merged strongest first (Kruskal-style); an edge whose merge would put two SKUs of the
same region into one group is refused and reported as a conflict. That keeps groups meaningful
("the same product in DE, FR, US") even when pairwise decisions disagree around a triangle.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np
import pandas as pd

Node = tuple[str, str]  # (region, sku)


class _Groups:
    """Union-find that also tracks the regions in each component."""

    def __init__(self) -> None:
        self.parent: dict[Hashable, Hashable] = {}
        self.regions: dict[Hashable, dict[str, int]] = {}

    def find(self, x: Node) -> Hashable:
        if x not in self.parent:
            self.parent[x] = x
            self.regions[x] = {x[0]: 1}
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Node, b: Node, allow_same_region: bool) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return True
        if not allow_same_region and set(self.regions[ra]) & set(self.regions[rb]):
            return False
        if sum(self.regions[ra].values()) < sum(self.regions[rb].values()):
            ra, rb = rb, ra
        self.parent[rb] = ra
        for region, n in self.regions.pop(rb).items():
            self.regions[ra][region] = self.regions[ra].get(region, 0) + n
        return True


def build_groups(
    edges: Sequence[tuple[str, str, str, str, float]], *, allow_same_region: bool = False
) -> tuple[pd.DataFrame, list[bool]]:
    """Group accepted pairs ``(region_a, sku_a, region_b, sku_b, score)``.

    Returns ``(groups, kept)``: a ``group_id, region, sku`` table (ids ``g000001``... in a stable
    order) and, per input edge, whether it was merged (``False`` = refused as a region conflict).
    """
    comps, kept = group_components(edges, allow_same_region=allow_same_region)
    return groups_table(comps), kept


def group_components(
    edges: Sequence[tuple[str, str, str, str, float]], *, allow_same_region: bool = False
) -> tuple[list[list[Node]], list[bool]]:
    """:func:`build_groups` before numbering: each group's sorted members, and ``kept`` per edge
    (groups of separate batches of components are numbered together by :func:`groups_table`)."""
    if not edges:
        return [], []
    ra, sa, rb, sb, score = (np.asarray(c, dtype=object) for c in zip(*edges, strict=True))
    return edge_groups([ra, sa, rb, sb], score.astype(np.float64), allow_same_region=allow_same_region)


def edge_groups(
    cols: Sequence[np.ndarray], score: np.ndarray, *, allow_same_region: bool = False
) -> tuple[list[list[Node]], list[bool]]:
    """:func:`group_components` of edges given as columns (``region_a, sku_a, region_b, sku_b``).

    Why not merge every edge in Python: a connected component of the edges whose products are of
    distinct regions takes every one of its edges whatever their order (no merge in it can put two
    SKUs of one region together), and merges in one component never touch another. So only the
    components holding two SKUs of a region (few: a pairwise decision disagreeing around a
    triangle) are merged strongest edge first; the rest are found at once (a union-find over 900k
    accepted pairs was 8 s and ~0.5 KB a product at 300k x 3). Same groups and ``kept``."""
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    n = len(score)
    if not n:
        return [], []
    region = np.concatenate([np.asarray(cols[0], object), np.asarray(cols[2], object)])
    sku = np.concatenate([np.asarray(cols[1], object), np.asarray(cols[3], object)])
    region_code, regions = pd.factorize(region)
    sku_code, _ = pd.factorize(sku)
    node, _ = pd.factorize(region_code.astype(np.int64) * (int(sku_code.max()) + 1) + sku_code)
    nodes = int(node.max()) + 1
    graph = coo_array((np.ones(n, dtype=np.int8), (node[:n], node[n:])), shape=(nodes, nodes))
    _, label = connected_components(graph, directed=False)
    first = np.unique(node, return_index=True)[1]  # a position of each node: its region and SKU
    node_region, node_sku = region_code[first], sku[first]
    kept = np.ones(n, dtype=bool)
    clash = np.zeros(int(label.max()) + 1, dtype=bool)
    if not allow_same_region:  # components with two products of one region
        per = np.unique(label.astype(np.int64) * len(regions) + node_region, return_counts=True)
        clash[per[0][per[1] > 1] // len(regions)] = True
    comps: list[list[Node]] = []
    if clash.any():
        hard = np.flatnonzero(clash[label[node[:n]]])
        sub = list(zip(*(np.asarray(c, object)[hard] for c in cols), score[hard].tolist(), strict=True))
        found, sub_kept = _merge_strongest_first(sub, allow_same_region)
        comps += found
        kept[hard] = sub_kept
    easy = np.flatnonzero(~clash[label])  # every node of a component without a clash
    names = np.asarray(regions, dtype=object)
    region_rank = pd.factorize(names, sort=True)[0]  # ranks as Python orders the strings
    sku_rank = pd.factorize(node_sku, sort=True)[0]
    easy = easy[np.lexsort((sku_rank[easy], region_rank[node_region[easy]], label[easy]))]
    bounds = np.flatnonzero(np.diff(label[easy])) + 1
    for members in np.split(easy, bounds) if len(easy) else []:
        if len(members) > 1:
            comps.append(
                list(zip(names[node_region[members]].tolist(), node_sku[members].tolist(), strict=True))
            )
    return comps, kept.tolist()


def _merge_strongest_first(
    edges: Sequence[tuple[str, str, str, str, float]], allow_same_region: bool
) -> tuple[list[list[Node]], list[bool]]:
    """Edges merged strongest first (ties by their products), a merge refused where it would put two
    SKUs of one region in a group: each group's sorted members and ``kept`` per edge."""
    uf = _Groups()
    kept = [False] * len(edges)
    order = sorted(range(len(edges)), key=lambda i: (-edges[i][4], edges[i][:4]))
    for i in order:
        ra, sa, rb, sb, _ = edges[i]
        kept[i] = uf.union((ra, sa), (rb, sb), allow_same_region)
    members: dict[Hashable, list[Node]] = {}
    for node in uf.parent:
        members.setdefault(uf.find(node), []).append(node)
    return [sorted(m) for m in members.values() if len(m) > 1], kept


def groups_table(comps: Sequence[Sequence[Node]]) -> pd.DataFrame:
    """The ``group_id, region, sku`` table of groups (sorted members each): ids ``g000001``... in
    the order of their sorted member lists, so they do not depend on how the groups were found."""
    ordered = sorted(comps)
    # columns, not a dict per member (~0.3 KB each: +0.2 GB at 900k grouped products); a group's
    # rows share its id's string
    names = np.array([f"g{gi:06d}" for gi in range(1, len(ordered) + 1)], dtype=object)
    group_id = np.repeat(names, [len(comp) for comp in ordered]) if ordered else np.zeros(0, dtype=object)
    region = np.array([member[0] for comp in ordered for member in comp], dtype=object)
    sku = np.array([member[1] for comp in ordered for member in comp], dtype=object)
    return pd.DataFrame(
        {"group_id": group_id, "region": region, "sku": sku}, columns=["group_id", "region", "sku"]
    )
