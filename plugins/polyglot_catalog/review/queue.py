"""The review queue: the pairs of a match run most worth a person's time.

Strata, in queue order (docs/REVIEW.md):

- ``conflict``: pairs the group rule refused (``conflict``) and matches a tie alone decided
  (``ambiguous``);
- ``runner_up``: accepted pairs whose product has another candidate of the same region scoring
  almost as high (within ``margin``): sibling variants, where most wrong matches are;
- ``uncertain``: pairs scoring closest to the threshold, on either side, among accepted pairs and
  each product's best rejected candidate;
- ``sample_match`` / ``sample_rejected`` / ``sample_rest``: seeded uniform samples of the accepted
  pairs, of the rejected pairs that are a product's best candidate (where missed twins are), and of
  the other rejected candidate pairs. Only these estimate precision and recall without bias
  (:mod:`.estimate`, stratified), so a sampled pair keeps its sample stratum even when it is also
  uncertain.

Pairs already decided (while their texts are unchanged) and pairs another reviewer holds are left
out; each row carries its evidence and the differences between the two texts.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

from .diff import describe, differences
from .store import text_hash

STRATA = ("conflict", "runner_up", "uncertain", "sample_match", "sample_rejected", "sample_rest")
SAMPLES = ("sample_match", "sample_rejected", "sample_rest")
KEY = ["region_a", "sku_a", "region_b", "sku_b"]
QUEUE_COLUMNS = [
    *KEY,
    "stratum",
    "stratum_size",
    "score",
    "decision",
    "rival_sku",
    "rival_score",
    "explain",
    "differences",
    "text_a",
    "text_b",
    "hash_a",
    "hash_b",
]


def _plain(pairs: pd.DataFrame) -> pd.DataFrame:
    """The columns the queue needs as plain objects (the matcher's are categoricals)."""
    cols = [*KEY, "score", "decision", "ambiguous", "explain", "text_a", "text_b"]
    out = pd.DataFrame({c: pairs[c].astype(object) if c in pairs else None for c in cols})
    out["score"] = pairs["score"].astype(float).to_numpy()
    out["ambiguous"] = (
        pairs["ambiguous"].fillna(False).astype(bool).to_numpy() if "ambiguous" in pairs else False
    )
    return out.reset_index(drop=True)


def _runner_up(pairs: pd.DataFrame, margin: float) -> pd.DataFrame:
    """Accepted pairs with a rival candidate of either product (another SKU of the other region)
    within ``margin`` of their score; ``rival_sku`` / ``rival_score`` name the closest rival."""
    rows = []
    acc = pairs[pairs["decision"] == "match"]
    ranked = pairs.sort_values("score", ascending=False, kind="stable")
    for side, other in (("a", "b"), ("b", "a")):
        grp = [f"region_{side}", f"sku_{side}", f"region_{other}"]
        top = ranked.groupby(grp, sort=False).head(2)[[*grp, f"sku_{other}", "score"]]
        top = top.rename(columns={f"sku_{other}": "rival_sku", "score": "rival_score"})
        joined = acc.merge(top, on=grp, how="inner")
        joined = joined[joined["rival_sku"] != joined[f"sku_{other}"]]
        rows.append(joined[joined["score"] - joined["rival_score"] <= margin])
    out = pd.concat(rows, ignore_index=True)
    out = out.assign(gap=out["score"] - out["rival_score"]).sort_values(["gap", *KEY], kind="stable")
    return out.drop_duplicates(KEY).drop(columns="gap")


def _best_of_a_product(pairs: pd.DataFrame) -> np.ndarray:
    """Mask of pairs that are the best-scoring candidate of either of their products."""
    ranked = pairs.sort_values("score", ascending=False, kind="stable")
    best = np.zeros(len(pairs), dtype=bool)
    for side, other in (("a", "b"), ("b", "a")):
        top = ranked.groupby([f"region_{side}", f"sku_{side}", f"region_{other}"], sort=False).head(1)
        best[top.index.to_numpy()] = True
    return best


def _uncertain(pairs: pd.DataFrame, threshold: float, n: int) -> pd.DataFrame:
    """The ``n`` pairs closest to the threshold among those a decision hangs on: accepted pairs and
    each product's best rejected candidate (a product's tenth candidate near the cut decides nothing)."""
    pool = pairs[_best_of_a_product(pairs) | (pairs["decision"] == "match").to_numpy()]
    return pool.iloc[np.argsort((pool["score"] - threshold).abs().to_numpy(), kind="stable")[:n]]


def build_queue(
    pairs: pd.DataFrame,
    threshold: float,
    *,
    decided: Collection[tuple[str, str, str, str]] = (),
    held: Collection[tuple[str, str, str, str]] = (),
    uncertain: int = 50,
    runner_up: int = 50,
    conflicts: int = 50,
    sample: int = 25,
    margin: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """The queue of ``pairs`` (a match run's pairs table) at ``threshold``, columns
    :data:`QUEUE_COLUMNS`, one row per pair, in stratum order.

    ``decided`` / ``held``: ``(region_a, sku_a, region_b, sku_b)`` keys to leave out (decided with
    unchanged texts; claimed by another reviewer). The samples are drawn before either is removed, so
    the same seed draws the same sample whatever has been reviewed since."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1]; got {threshold}")
    missing = [c for c in (*KEY, "score", "decision", "text_a", "text_b") if c not in pairs]
    if missing:
        raise ValueError(f"pairs table lacks columns {missing}: pass a match run's pairs.parquet")
    p = _plain(pairs)
    rng = np.random.default_rng(seed)
    accepted = p["decision"] == "match"
    # rejected pairs worth sampling: a product's best candidate (its other candidates are almost all
    # plainly different, so a uniform sample of them finds no missed twin)
    rejected = ~accepted & pd.Series(_best_of_a_product(p), index=p.index)

    def sample_of(mask: pd.Series) -> pd.DataFrame:
        idx = np.flatnonzero(mask.to_numpy())
        return p.iloc[np.sort(rng.choice(idx, min(sample, len(idx)), replace=False))]

    parts = {
        "sample_match": sample_of(accepted),
        "sample_rejected": sample_of(rejected),
        "sample_rest": sample_of(~accepted & ~rejected),
        "conflict": p[(p["decision"] == "conflict") | (accepted & p["ambiguous"])].head(conflicts),
        "runner_up": _runner_up(p, margin).head(runner_up),
        "uncertain": _uncertain(p, threshold, uncertain * 4),
    }
    skip = {tuple(k) for k in decided} | {tuple(k) for k in held}
    seen: set[tuple[str, str, str, str]] = set()
    for stratum in SAMPLES:
        seen |= set(parts[stratum][KEY].itertuples(index=False, name=None))
    frames = []
    for stratum in STRATA:
        part = parts[stratum]
        keys = list(part[KEY].itertuples(index=False, name=None))
        own = stratum.startswith("sample_")
        keep = [k not in skip and (own or k not in seen) for k in keys]
        part = part[np.array(keep, dtype=bool)]
        if not own:
            seen |= set(part[KEY].itertuples(index=False, name=None))
            if stratum == "uncertain":
                part = part.head(uncertain)
        frames.append(part.assign(stratum=stratum))
    queue = pd.concat(frames, ignore_index=True)
    sizes = {
        "sample_match": int(accepted.sum()),
        "sample_rejected": int(rejected.sum()),
        "sample_rest": int((~accepted & ~rejected).sum()),
    }
    queue["stratum_size"] = [sizes.get(s) for s in queue["stratum"]]
    for col in ("rival_sku", "rival_score"):
        if col not in queue:
            queue[col] = None
    diffs = [differences(a or "", b or "") for a, b in zip(queue["text_a"], queue["text_b"], strict=True)]
    queue["differences"] = [describe(d) for d in diffs]
    queue["hash_a"] = [text_hash(t) for t in queue["text_a"]]
    queue["hash_b"] = [text_hash(t) for t in queue["text_b"]]
    queue["rival_score"] = queue["rival_score"].astype(float)
    return queue[QUEUE_COLUMNS]


def decided_keys(decisions: pd.DataFrame, pairs: pd.DataFrame) -> set[tuple[str, str, str, str]]:
    """Keys of decisions still valid for ``pairs``' texts (a changed text reopens the pair)."""
    if decisions.empty:
        return set()
    p = _plain(pairs)
    current = {
        k: (text_hash(a), text_hash(b))
        for k, a, b in zip(p[KEY].itertuples(index=False, name=None), p["text_a"], p["text_b"], strict=True)
    }
    out = set()
    for row in decisions.itertuples(index=False):
        key = (row.region_a, row.sku_a, row.region_b, row.sku_b)
        now = current.get(key)
        if now is None or row.hash_a is None or (row.hash_a, row.hash_b) == now:
            out.add(key)
    return out


def round_robin(queue: pd.DataFrame) -> pd.DataFrame:
    """The queue with its strata interleaved (one of each in :data:`STRATA` order, then again), so a
    reviewer who stops after any number of pairs has seen every stratum, the random samples too."""
    rank = queue.groupby("stratum", sort=False).cumcount()
    order = queue["stratum"].map({s: n for n, s in enumerate(STRATA)})
    return queue.assign(_r=rank, _o=order).sort_values(["_r", "_o"], kind="stable").drop(columns=["_r", "_o"])
