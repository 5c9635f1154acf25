"""Pair evidence for millions of candidate pairs at once: :func:`.evidence.compare`, vectorised.

Why: ``compare`` runs once per candidate pair in Python (~25 us with its quantity matching); at
100k products per region and k=10 that is ~2 million pairs per region pair, minutes on its own.
Here each product's evidence is packed once (quantities into padded arrays, codes and names into
sparse indicator rows) and every pair is scored with array operations; only the short ``explain``
strings are still assembled per pair, and only from the parts that are non-empty. The values equal
``compare``'s (same greedy one-to-one quantity matching, same tolerances, same IDF sums up to float
rounding); tests/test_matching_fastev.py checks that on real and synthetic texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix

from .evidence import EVIDENCE_COLUMNS, REL_TOL, TextEvidence, compare

#: Products with more quantities than this go through ``compare`` (rare; keeps the arrays small).
MAX_QUANTITIES = 8
CHUNK = 250_000  # pairs per array pass: bounds the (pairs x quantities) temporaries


class _Side:
    """One region's evidence packed for array work."""

    def __init__(self, evs: Sequence[TextEvidence], dims: dict[str, int], vocab: dict[str, int]) -> None:
        n = len(evs)
        q = max((len(e.quantities) for e in evs), default=0)
        self.q = min(q, MAX_QUANTITIES)
        self.too_many = np.array([len(e.quantities) > MAX_QUANTITIES for e in evs], dtype=bool)
        self.dim = np.full((n, max(self.q, 1)), -1, dtype=np.int16)
        self.val = np.zeros((n, max(self.q, 1)), dtype=np.float64)
        for i, e in enumerate(evs):
            for j, qty in enumerate(e.quantities[: self.q]):
                self.dim[i, j] = dims.setdefault(qty.dimension, len(dims))
                self.val[i, j] = qty.value
        self.code_rows = _rows([e.codes for e in evs], vocab)
        self.name_rows = _rows([e.names for e in evs], vocab)
        self.n_codes = np.diff(self.code_rows[1])
        self.n_names = np.diff(self.name_rows[1])
        gt = [e.gtin for e in evs]
        self.gtin = np.array([g if g is not None else "" for g in gt], dtype=object)
        self.has_gtin = np.array([bool(g) for g in gt], dtype=bool)


def _rows(sets: Sequence[set[str]], vocab: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """CSR column ids and row pointers of token sets (tokens numbered in ``vocab`` as met)."""
    indptr, cols = [0], []
    for s in sets:
        cols.extend(vocab.setdefault(t, len(vocab)) for t in s)
        indptr.append(len(cols))
    return np.asarray(cols, dtype=np.int64), np.asarray(indptr, dtype=np.int64)


def _indicator(
    rows: tuple[np.ndarray, np.ndarray], width: int, weights: np.ndarray | None = None
) -> csr_matrix:
    cols, indptr = rows
    data = np.ones(len(cols)) if weights is None else weights[cols]
    return csr_matrix((data, cols, indptr), shape=(len(indptr) - 1, width))


def _rowdot(x: csr_matrix, y: csr_matrix, ia: np.ndarray, ib: np.ndarray) -> np.ndarray:
    if len(ia) == 0:
        return np.zeros(0)
    return np.asarray(x[ia].multiply(y[ib]).sum(axis=1)).ravel()


def _quantities(a: _Side, b: _Side, ia: np.ndarray, ib: np.ndarray, temp: int) -> tuple[np.ndarray, ...]:
    """Greedy one-to-one quantity matching of ``_match_quantities``, for all pairs at once."""
    p = len(ia)
    da, va = a.dim[ia], a.val[ia]
    db, vb = b.dim[ib], b.val[ib]
    used = np.zeros((p, db.shape[1]), dtype=bool)
    matched_a = np.zeros((p, da.shape[1]), dtype=bool)
    for i in range(a.q):
        found = np.zeros(p, dtype=bool)
        di, vi = da[:, i], va[:, i]
        for j in range(b.q):
            tol = np.maximum(
                REL_TOL * np.maximum(np.abs(vi), np.abs(vb[:, j])), np.where(di == temp, 0.55, 1e-6)
            )
            hit = (di >= 0) & (di == db[:, j]) & ~used[:, j] & ~found & (np.abs(vi - vb[:, j]) <= tol)
            used[:, j] |= hit
            found |= hit
        matched_a[:, i] = found
    comparable = np.zeros(p, dtype=np.int64)
    conflicts = np.zeros(p, dtype=np.int64)
    shared = np.zeros(p, dtype=np.int64)
    dims_present = np.union1d(np.unique(da[da >= 0]), np.unique(db[db >= 0]))
    for d in dims_present.tolist():
        na = (da == d).sum(axis=1)
        nb = (db == d).sum(axis=1)
        both = (na > 0) & (nb > 0)
        low = np.minimum(na, nb)
        hits = ((da == d) & matched_a).sum(axis=1)
        comparable += np.where(both, low, 0)
        conflicts += both & (hits < low)
        shared += both
    return used.sum(axis=1), comparable, shared, conflicts


def compare_many(
    ev_a: Sequence[TextEvidence],
    ev_b: Sequence[TextEvidence],
    ia: np.ndarray,
    ib: np.ndarray,
    idf: dict[str, float],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """``compare(ev_a[ia[p]], ev_b[ib[p]], idf)`` for every pair ``p``: float32 columns of
    :data:`.evidence.EVIDENCE_COLUMNS` and the explain strings, in pair order."""
    ia = np.asarray(ia, dtype=np.int64)
    ib = np.asarray(ib, dtype=np.int64)
    dims: dict[str, int] = {"temperature": 0}
    vocab: dict[str, int] = {}
    a, b = _Side(ev_a, dims, vocab), _Side(ev_b, dims, vocab)
    width = max(len(vocab), 1)
    weights = np.ones(width)
    for t, col in vocab.items():
        weights[col] = idf.get(t, 1.0)
    a_codes, b_codes = _indicator(a.code_rows, width), _indicator(b.code_rows, width)
    a_names, b_names = _indicator(a.name_rows, width), _indicator(b.name_rows, width)
    b_names_w = _indicator(b.name_rows, width, weights)
    wa_names = np.asarray(a_names @ weights).ravel()
    wb_names = np.asarray(b_names @ weights).ravel()

    p = len(ia)
    out = {c: np.zeros(p, dtype=np.float32) for c in EVIDENCE_COLUMNS}
    explain: list[str] = [""] * p
    said: dict[str, str] = {}  # one object per distinct explain string (most pairs repeat a few)
    for s in range(0, p, CHUNK):
        x, y = ia[s : s + CHUNK], ib[s : s + CHUNK]
        matched, comparable, shared_dims, conflicts = _quantities(a, b, x, y, dims["temperature"])
        sc = np.rint(_rowdot(a_codes, b_codes, x, y)).astype(np.int64)
        ca, cb = a.n_codes[x], b.n_codes[y]
        sw = _rowdot(a_names, b_names_w, x, y)
        sn = np.rint(_rowdot(a_names, b_names, x, y)).astype(np.int64)
        union = wa_names[x] + wb_names[y] - sw
        has_union = (a.n_names[x] + b.n_names[y]) > 0
        both_g = a.has_gtin[x] & b.has_gtin[y]
        same_g = both_g & (a.gtin[x] == b.gtin[y])
        sl = slice(s, s + len(x))
        with np.errstate(divide="ignore", invalid="ignore"):
            out["ev_numbers"][sl] = np.where(comparable > 0, matched / np.maximum(comparable, 1), 0.0)
            out["conflict_numbers"][sl] = np.where(
                shared_dims > 0, conflicts / np.maximum(shared_dims, 1), 0.0
            )
            out["ev_codes"][sl] = np.where((ca > 0) & (cb > 0), sc / np.maximum(np.minimum(ca, cb), 1), 0.0)
            out["ev_names"][sl] = np.where(has_union & (union > 0), sw / np.where(union > 0, union, 1.0), 0.0)
        out["ev_gtin"][sl] = same_g
        out["conflict_gtin"][sl] = both_g & ~same_g
        # explain strings: only pairs with something to say do any Python work
        talk = np.flatnonzero((matched > 0) | (conflicts > 0) | (sc > 0) | (sn > 0) | both_g)
        for t in talk.tolist():
            i, j = int(x[t]), int(y[t])
            why = []
            if matched[t]:
                why.append(f"{matched[t]}/{comparable[t]} quantities agree")
            if conflicts[t]:
                why.append(f"quantities differ in {conflicts[t]} dimension(s)")
            if sc[t]:
                why.append("codes " + ", ".join(sorted(ev_a[i].codes & ev_b[j].codes)[:3]))
            if sn[t]:
                shared = ev_a[i].names & ev_b[j].names
                why.append("names " + ", ".join(sorted(shared, key=lambda w: -idf.get(w, 1.0))[:3]))
            if both_g[t]:
                why.append("same GTIN" if same_g[t] else "GTINs differ")
            text = "; ".join(why)
            explain[s + t] = said.setdefault(text, text)
    # the few products with very many quantities: the reference implementation, pair by pair
    slow = np.flatnonzero(a.too_many[ia] | b.too_many[ib])
    for t in slow.tolist():
        e = compare(ev_a[int(ia[t])], ev_b[int(ib[t])], idf)
        for c in EVIDENCE_COLUMNS:
            out[c][t] = getattr(e, c)
        explain[t] = e.explain
    return out, explain
