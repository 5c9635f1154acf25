"""Synthetic catalogs at any size whose vectors follow the bundled model's embedding statistics.

Why synthetic: embedding 300k texts on 2 cores takes hours, and the scale benchmarks measure the
matcher and the store, not the model. Why anchored in the model: random unit vectors are nearly
orthogonal and make every nearest-neighbour problem trivial; real embeddings are not.

How: ``ANCHORS`` real IKEA products (en, de, fr descriptions, first 300 characters) are embedded once
with the real ``Encoder`` (cached in /tmp). Per language ``L``: mean ``mu_L``; per product the shared
content ``c_p = mean_L(v_pL - mu_L)``; the residual ``r_pL = v_pL - mu_L - c_p`` is the translation
noise. A synthetic product draws ``c = C^T z / sqrt(n)`` (``z`` standard normal, ``C`` the centred
content rows: the empirical content covariance, rank <= n-1) plus a small isotropic part for the
missing rank, and its version in region ``L`` is ``normalise(mu_L + c + R_L^T z' / sqrt(n))`` with
the empirical residual covariance. So every product has one noisy twin per other region (the ground
truth is the shared index), with real language offsets, content spread and translation noise.
Texts are synthetic: a name token, a category word in the region's language, a size with units
(inches in US), a colour and an article code, so every evidence feature has something to parse.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
from _common import SHARED_DATA

ANCHORS = 300
LANGS = {"DE": "de", "FR": "fr", "US": "en"}
CACHE = Path(os.environ.get("POLYGLOT_BENCH_CACHE", "/tmp/polyglot_bench")) / f"ikea_anchors_{ANCHORS}.npz"

_CATEGORY = {
    "en": ["shelf", "table", "chair", "lamp", "sofa", "bed frame", "desk", "cabinet", "rug", "mirror"],
    "de": [
        "Regal",
        "Tisch",
        "Stuhl",
        "Leuchte",
        "Sofa",
        "Bettgestell",
        "Schreibtisch",
        "Schrank",
        "Teppich",
        "Spiegel",
    ],
    "fr": [
        "étagère",
        "table",
        "chaise",
        "lampe",
        "canapé",
        "cadre de lit",
        "bureau",
        "armoire",
        "tapis",
        "miroir",
    ],
}
_COLOUR = {
    "en": ["white", "black", "oak", "grey", "blue", "green", "birch", "walnut"],
    "de": ["weiß", "schwarz", "Eiche", "grau", "blau", "grün", "Birke", "Nussbaum"],
    "fr": ["blanc", "noir", "chêne", "gris", "bleu", "vert", "bouleau", "noyer"],
}
_SYL = [
    "KAL",
    "LAX",
    "BIL",
    "LY",
    "POÄ",
    "NG",
    "MAL",
    "M",
    "HEM",
    "NES",
    "LAC",
    "K",
    "EKT",
    "ORP",
    "FRI",
    "HETEN",
]


def anchor_vectors() -> dict[str, np.ndarray]:
    """``{"en"|"de"|"fr": (ANCHORS, 384)}`` real embeddings of the same products (cached)."""
    if CACHE.exists():
        with np.load(CACHE) as z:
            return {k: z[k] for k in z.files}
    from polyglot_catalog.encoding import Encoder

    with (SHARED_DATA / "ikea" / "ikea_products_dev.csv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if all(r[lang].strip() for lang in ("en", "de", "fr"))]
    rows = rows[:ANCHORS]
    enc = Encoder()
    out = {lang: enc.encode([r[lang][:300] for r in rows]) for lang in ("en", "de", "fr")}
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, **out)
    return out


def vector_model(anchors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Means per language, centred content rows, residual rows per language (see the module doc)."""
    mu = {lang: v.mean(axis=0) for lang, v in anchors.items()}
    centred = {lang: v - mu[lang] for lang, v in anchors.items()}
    content = np.mean(list(centred.values()), axis=0)
    model = {f"mu_{lang}": mu[lang] for lang in anchors}
    model["content"] = content - content.mean(axis=0)
    for lang in anchors:
        model[f"res_{lang}"] = centred[lang] - content
    return model


VARIANT_SHARE = 0.1  # content variance a product does not share with its family (size variants)
FAMILY = 4  # products per family on average: same line, other sizes/colours (near duplicates)


def _families(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 1).integers(0, max(1, n // FAMILY), n)


def synth_vectors(n: int, seed: int = 0, chunk: int = 20_000) -> dict[str, np.ndarray]:
    """``{region: (n, 384) float32}`` for DE/FR/US; row ``i`` of each region is the same product.

    Products come in families (:data:`FAMILY` on average) sharing ``1 - VARIANT_SHARE`` of their
    content variance, so near duplicates exist the way size variants do in a real catalog.
    """
    model = vector_model(anchor_vectors())
    c_rows, m = model["content"], len(model["content"])
    iso = float(np.sqrt(np.mean(c_rows.var(axis=0)))) * 0.3  # fills the rank the anchors lack
    rng = np.random.default_rng(seed)
    fam = _families(n, seed)
    base = (rng.standard_normal((int(fam.max()) + 1, m)) @ c_rows / np.sqrt(m)).astype(np.float32)
    out = {r: np.empty((n, c_rows.shape[1]), dtype=np.float32) for r in LANGS}
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        own = rng.standard_normal((e - s, m)) @ c_rows / np.sqrt(m)
        c = np.sqrt(1 - VARIANT_SHARE) * base[fam[s:e]] + np.sqrt(VARIANT_SHARE) * own
        c += iso * rng.standard_normal(c.shape)
        for region, lang in LANGS.items():
            noise = rng.standard_normal((e - s, m)) @ model[f"res_{lang}"] / np.sqrt(m)
            v = model[f"mu_{lang}"] + c + noise
            out[region][s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def synth_texts(n: int, region: str, seed: int = 0) -> list[str]:
    """Short product texts: ``NAME category WxH cm|in, colour[, 123.456.78]``. A family shares its
    name; twins share size (inches in US), colour and, for half the products, an article code."""
    lang = LANGS[region]
    rng = np.random.default_rng(seed + 2)  # same draws in every region: twins agree
    fam = _families(n, seed)
    cat = rng.integers(0, len(_CATEGORY["en"]), n)
    col = rng.integers(0, len(_COLOUR["en"]), n)
    w = rng.integers(20, 200, n)
    h = rng.integers(20, 200, n)
    has_code = rng.random(n) < 0.5
    texts = []
    for i in range(n):
        k = (int(fam[i]) * 2654435761) % 2**32
        name = "".join(_SYL[(k >> (5 * j)) % len(_SYL)] for j in range(3))
        size = f'{w[i] / 2.54:.1f}x{h[i] / 2.54:.1f}"' if region == "US" else f"{int(w[i])}x{int(h[i])} cm"
        code = f", {i % 1000:03d}.{(i // 1000) % 1000:03d}.{(i * 37) % 100:02d}" if has_code[i] else ""
        texts.append(
            f"{name} {_CATEGORY[lang][cat[int(fam[i]) % len(cat)]]} {size}, {_COLOUR[lang][col[i]]}{code}"
        )
    return texts


def payload(region: str, sku: str, text: str, model: str = "bundled") -> dict[str, object]:
    """A payload shaped like the embed stage's (see docs/ARCHITECTURE.md)."""
    return {
        "sku": sku,
        "region": region,
        "language": LANGS[region],
        "text": text,
        "content_hash": hashlib.sha256(text.encode()).hexdigest(),
        "model": model,
        "source_file": f"s3://catalog/{region.lower()}/part-0001.parquet",
        "status": "active",
        "embedded_at": "2026-11-26T09:00:00+00:00",
        "title": text.split(",")[0],
    }
