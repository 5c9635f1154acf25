"""One-to-one decisions within a region pair: a product has at most one twin per region.

``hungarian`` solves the maximum-weight matching on the sparse candidate graph (never a dense
n x m matrix): each side gets a private "stay unmatched" node, so a partial matching is always
feasible, and only pairs scoring above the threshold can be chosen. ``mutual`` keeps pairs that
are each other's best candidate, the cheaper and more conservative rule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

AssignMethod = Literal["hungarian", "mutual"]
# LAPJVsp can loop forever on float weights whose sums round differently (ties at a threshold do
# it); integer-valued weights are exact in float64, so margins are quantised to 1e-6 first.
_SCALE = 1_000_000
_EPS = 1e-9  # a pair exactly at the threshold still clears it
# Priced-in edges beyond this share of the nodes send the whole graph to HiGHS. At 100k products per
# region a first pass priced in 12 edges and one more LAPJVsp round took 0.04 s; with 30% of the pairs
# dropped, LAPJVsp rounds took 523 s in all where HiGHS solved the whole graph in 53 s.
REPRICE_SHARE = 0.01
# Bellman-Ford rounds for the duals before giving up on the core and solving all pairs at once.
_MAX_DUAL_ROUNDS = 10_000


def mutual_best(ia: np.ndarray, ib: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Mask of pairs that are the top-scoring candidate of both endpoints (ties: lower row wins)."""
    mask = np.zeros(len(score), dtype=bool)
    if len(score) == 0:
        return mask
    ia, ib = np.asarray(ia), np.asarray(ib)
    order = np.lexsort((np.arange(len(score)), -score))
    _, first_a = np.unique(ia[order], return_index=True)  # first = best of each product
    ub, first_b = np.unique(ib[order], return_index=True)
    best_a, best_b = order[first_a], order[first_b]
    mask[best_a[best_b[np.searchsorted(ub, ib[best_a])] == best_a]] = True
    return mask


def integer_gain(weight: np.ndarray) -> np.ndarray:
    """The integer weights the solvers maximise: ``weight * 1e6`` rounded, plus 1 so any positive
    edge beats leaving both ends unmatched (exact in float64, so sums and duals compare exactly)."""
    return np.rint(np.asarray(weight, dtype=np.float64) * _SCALE) + 1.0


def hungarian_weight(score: np.ndarray, threshold: float) -> np.ndarray:
    """Per pair, the margin ``hungarian`` maximises: ``score - threshold`` (nudged so a pair exactly
    at the threshold counts), 0 for pairs below it."""
    score = np.asarray(score, dtype=np.float64)
    return np.where(score >= threshold, score - threshold + _EPS, 0.0)


def max_weight_matching(ia: np.ndarray, ib: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Mask of a maximum-weight one-to-one matching using only edges with positive ``weight``.

    Weights are quantised by :func:`integer_gain`; a repeated ``(a, b)`` edge counts once, with its
    largest weight.

    Why not one LAPJVsp call on every edge: a pass with a low threshold hands it every candidate
    pair, and it spends O(nodes) per product it has to re-route; the label-free cut's zero-threshold
    pass took 14-17 s a region pair at 100k products and about an hour at 300k. So the solve starts from
    each product's best edge (its two best made the first solve 17x slower at 100k) and checks every
    other edge against the LP duals of that solution (complementary slackness: an edge with
    ``w <= u_a + v_b`` cannot improve it). Edges that fail are added and LAPJVsp runs again while
    they are few; when many products need an edge outside the core, the whole graph goes to HiGHS's
    dual simplex instead (bipartite matching LPs have integral optima), which does not slow down on
    such graphs. Either way the result is an optimum of the whole graph, not an approximation.
    """
    mask = np.zeros(len(weight), dtype=bool)
    keep = np.flatnonzero(weight > 0)
    if len(keep) == 0:
        return mask
    # one edge per (a, b), its best: order by key, then weight descending, then position
    ua, ra = np.unique(ia[keep], return_inverse=True)
    ub, rb = np.unique(ib[keep], return_inverse=True)
    na, nb = len(ua), len(ub)
    key = ra.astype(np.int64) * nb + rb
    gain = integer_gain(weight[keep])
    order = np.lexsort((np.arange(len(keep)), -gain, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    edge = order[first]  # sorted by key
    a, b, w = ra[edge], rb[edge], gain[edge]

    core = _best_edges(a, w, na) | _best_edges(b, w, nb)
    while True:
        idx = np.flatnonzero(core)
        mate = _lapjvsp(na, nb, a[idx], b[idx], w[idx])
        if core.all():
            break
        duals = _duals(na, nb, a[idx], b[idx], w[idx], mate)
        priced_in = ~core & (w > duals[0][a] + duals[1][b]) if duals is not None else ~core
        if not priced_in.any():
            break
        if priced_in.sum() > REPRICE_SHARE * (na + nb):
            mate = _highs(na, nb, a, b, w)
            if mate is not None:
                break
        core |= priced_in
    matched = np.flatnonzero(mate >= 0)
    chosen = np.searchsorted(key[edge], matched.astype(np.int64) * nb + mate[matched])
    mask[keep[edge[chosen]]] = True
    return mask


def _best_edges(node: np.ndarray, w: np.ndarray, n_nodes: int) -> np.ndarray:
    """Mask of each node's heaviest edges (all of them on a tie)."""
    best = np.full(n_nodes, -np.inf)
    np.maximum.at(best, node, w)
    return w == best[node]


def _lapjvsp(na: int, nb: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Partner in B of each A node (-1: unmatched) in a maximum-``w`` matching of unique edges.

    Builds the sparse (B' + A) x (A' + B) graph: real edges a->b (``w + 1``), their mirror b'->a'
    (1) so both dummies can pair up, and a->a', b'->b (1) for "unmatched"; LAPJVsp then finds a
    full matching in O(edges) memory.

    Why this node order: scipy's LAPJVsp reduces columns from the last one down, then spends O(nodes)
    per row left free. With the real B columns last, each first takes its best real row; with them
    first, the dummy columns took every A row and left most rows free: the same optimum took 3.7x
    as long at 30k products per region, and the gap grows with the catalog.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    e = len(a)
    rows = np.concatenate([nb + a, b, nb + np.arange(na), np.arange(nb)])
    cols = np.concatenate([na + b, a, np.arange(na), na + np.arange(nb)])
    vals = np.concatenate([w + 1.0, np.ones(e), np.ones(na), np.ones(nb)])
    graph = coo_matrix((vals, (rows, cols)), shape=(na + nb, na + nb)).tocsr()
    r, c = min_weight_full_bipartite_matching(graph, maximize=True)
    mate = np.full(na, -1, dtype=np.int64)
    real = (r >= nb) & (c >= na)
    mate[r[real] - nb] = c[real] - na
    return mate


def _highs(na: int, nb: int, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray | None:
    """Partner in B of each A node (-1: unmatched) from the matching LP, or None if HiGHS gave no
    integral optimum (it should: the constraint matrix of a bipartite graph is totally unimodular)."""
    from scipy.optimize import linprog
    from scipy.sparse import csc_array

    e = np.arange(len(a))
    incidence = csc_array(
        (np.ones(2 * len(a)), (np.concatenate([a, na + b]), np.concatenate([e, e]))), shape=(na + nb, len(a))
    )
    res = linprog(-w / _SCALE, A_ub=incidence, b_ub=np.ones(na + nb), bounds=(0, 1), method="highs-ds")
    if res.status != 0 or np.abs(res.x - np.rint(res.x)).max() > 1e-6:
        return None
    on = res.x > 0.5
    mate = np.full(na, -1, dtype=np.int64)
    mate[a[on]] = b[on]
    return mate


def _duals(
    na: int, nb: int, a: np.ndarray, b: np.ndarray, w: np.ndarray, mate: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """LP duals ``(u, v)`` proving ``mate`` optimal on these edges, or None when none are found.

    ``u_a + v_b >= w`` on every edge, with equality on matched edges and 0 on unmatched nodes.
    ``v`` is the least solution of ``v_b >= w_ab - u_a`` (``u_a = w(a, mate a) - v(mate a)``): a
    longest-path problem over alternating paths, relaxed Bellman-Ford style until nothing changes.
    The weights are integers, so every comparison is exact.
    """
    matched = mate >= 0
    w_mate = np.zeros(na)
    key = a.astype(np.int64) * nb + b
    order = np.argsort(key)
    at = order[np.searchsorted(key[order], np.flatnonzero(matched).astype(np.int64) * nb + mate[matched])]
    w_mate[matched] = w[at]
    free_edge = np.ones(len(a), dtype=bool)
    free_edge[at] = False
    ea, eb, ew = a[free_edge], b[free_edge], w[free_edge]
    via = mate[ea]
    has_mate = via >= 0
    base = np.where(has_mate, ew - w_mate[ea], ew)
    via = np.maximum(via, 0)
    v = np.zeros(nb)
    for _ in range(_MAX_DUAL_ROUNDS):
        reach = base + np.where(has_mate, v[via], 0.0)
        nxt = v.copy()
        np.maximum.at(nxt, eb, reach)
        if np.array_equal(nxt, v):
            break
        v = nxt
    else:
        return None
    u = np.where(matched, w_mate - v[np.maximum(mate, 0)], 0.0)
    free_b = np.ones(nb, dtype=bool)
    free_b[mate[matched]] = False
    if (u < 0).any() or (v[free_b] != 0).any():  # not optimal after all (cannot happen for LAPJVsp)
        return None
    return u, v


def assign_one_to_one(
    ia: np.ndarray, ib: np.ndarray, score: np.ndarray, threshold: float, method: AssignMethod = "hungarian"
) -> np.ndarray:
    """Mask of accepted pairs: one-to-one by ``method`` among pairs with ``score >= threshold``.

    Raises:
        ValueError: on an unknown method.
    """
    ia, ib, score = np.asarray(ia), np.asarray(ib), np.asarray(score, dtype=np.float64)
    if method == "mutual":
        return mutual_best(ia, ib, score) & (score >= threshold)
    if method == "hungarian":
        # maximise the total margin over the threshold: a pair only helps if it clears it
        return max_weight_matching(ia, ib, hungarian_weight(score, threshold))
    raise ValueError(f"method must be one of ('hungarian', 'mutual'); got {method!r}")
