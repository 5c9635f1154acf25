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

Multi-sentence descriptions (:func:`synth_descriptions`, for the sentence-alignment feature): that
line is the first sentence (its vector: the product's vector), then 2-5 more. One or two are
product-specific: each draws its own content ``c`` the same way a product does (without a family)
and its region versions are the same noisy translations ``normalise(mu_L + c + noise_L)``. The rest
are boilerplate drawn uniformly from a pool of :data:`BOILERPLATE` sentences per region, each pool
sentence one content draw translated the same way. So the sentence vectors reuse the fitted
statistics above; nothing new is modelled. The sentence texts carry no digits, units or capitalised
codes, so they add no evidence; product-specific ones name a coined lower-case word that differs per
region (no shared n-grams across regions beyond chance).
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
    enc = Encoder(precision="fp32")  # the reference the synthetic catalogs were built with
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


def _content_scale(model: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Centred content rows and the isotropic scale that fills the rank the anchors lack."""
    c_rows = model["content"]
    return c_rows, float(np.sqrt(np.mean(c_rows.var(axis=0)))) * 0.3


def _translate(
    c: np.ndarray, lang: str, rng: np.random.Generator, model: dict[str, np.ndarray]
) -> np.ndarray:
    """Unit rows ``normalise(mu_L + c + noise)`` with the fitted translation-noise covariance of ``lang``."""
    res = model[f"res_{lang}"]
    v = model[f"mu_{lang}"] + c + rng.standard_normal((len(c), len(res))) @ res / np.sqrt(len(res))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def synth_vectors(n: int, seed: int = 0, chunk: int = 20_000) -> dict[str, np.ndarray]:
    """``{region: (n, 384) float32}`` for DE/FR/US; row ``i`` of each region is the same product.

    Products come in families (:data:`FAMILY` on average) sharing ``1 - VARIANT_SHARE`` of their
    content variance, so near duplicates exist the way size variants do in a real catalog.
    """
    model = vector_model(anchor_vectors())
    c_rows, iso = _content_scale(model)
    m = len(c_rows)
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
            out[region][s:e] = _translate(c, lang, rng, model)
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


BOILERPLATE = 200  # shared sentences per region (care, assembly, material claims)
EXTRA_SENTENCES = (2, 5)  # sentences after the product line, inclusive range
SECOND_SPECIFIC = 0.3  # share of products with two product-specific sentences (else one)

_BOILER = {  # 8 subjects x 5 claims x 5 endings = 200 sentences per language, same order everywhere
    "en": (
        [
            "The frame",
            "The cover",
            "The surface",
            "The fabric",
            "The handle",
            "The drawer",
            "The base",
            "The panel",
        ],
        [
            "can be wiped clean",
            "is easy to assemble",
            "is made of recycled material",
            "has been tested for durability",
            "is sold separately",
        ],
        ["at home", "with care", "over time", "in most rooms", "for everyday use"],
    ),
    "de": (
        [
            "Das Gestell",
            "Der Bezug",
            "Die Oberfläche",
            "Der Stoff",
            "Der Griff",
            "Die Schublade",
            "Der Sockel",
            "Die Platte",
        ],
        [
            "lässt sich abwischen",
            "ist leicht zu montieren",
            "besteht aus recyceltem Material",
            "wurde auf Haltbarkeit geprüft",
            "ist separat erhältlich",
        ],
        ["zu Hause", "mit Sorgfalt", "mit der Zeit", "in den meisten Räumen", "für den täglichen Gebrauch"],
    ),
    "fr": (
        [
            "Le cadre",
            "La housse",
            "La surface",
            "Le tissu",
            "La poignée",
            "Le tiroir",
            "La base",
            "Le panneau",
        ],
        [
            "se nettoie facilement",
            "est facile à monter",
            "est en matériau recyclé",
            "a été testé pour sa durabilité",
            "est vendu séparément",
        ],
        ["à la maison", "avec soin", "avec le temps", "dans la plupart des pièces", "au quotidien"],
    ),
}
_SPECIFIC = {  # what a product-specific sentence says, around a coined word
    "en": ["Includes the {} insert.", "Comes with a {} cover.", "Fits the {} holder.", "Has a {} edge."],
    "de": ["Mit dem Einsatz {}.", "Mit einem Bezug {}.", "Passt zum Halter {}.", "Mit der Kante {}."],
    "fr": ["Avec l'insert {}.", "Livré avec une housse {}.", "S'adapte au support {}.", "Avec le bord {}."],
}
#: (odd multiplier, offset) per region: ``k -> k * a + b mod 2**24`` is a bijection, different per region
_CODE_MAP = {"DE": (2_654_435_761, 12_345), "FR": (40_503, 5_550_001), "US": (2_246_822_519, 9_876_543)}


def _boilerplate(lang: str, p: int) -> str:
    subj, claim, end = _BOILER[lang]
    return f"{subj[p % 8]} {claim[p // 8 % 5]} {end[p // 40 % 5]}."


def _coined(region: str, k: int) -> str:
    """A word unique to occurrence ``k`` in ``region`` (6 syllables, lower case: no name, no code)."""
    a, b = _CODE_MAP[region]
    code = (k * a + b) % 2**24
    return "".join(_SYL[(code >> (4 * j)) % 16] for j in range(6)).lower().capitalize()


def _plan(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per product (the same in every region): product-specific sentence count, boilerplate offsets
    and the pool sentences they pick."""
    rng = np.random.default_rng(seed + 3)
    extra = rng.integers(EXTRA_SENTENCES[0], EXTRA_SENTENCES[1] + 1, n)
    specific = 1 + (rng.random(n) < SECOND_SPECIFIC)
    boiler = extra - specific
    b_off = np.concatenate([[0], np.cumsum(boiler)])
    return specific, b_off, rng.integers(0, BOILERPLATE, int(b_off[-1]))


def synth_descriptions(
    n: int, region: str, product_vectors: np.ndarray, seed: int = 0, chunk: int = 20_000
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Multi-sentence descriptions of one region's ``n`` products and their ``sentence -> vector``
    lookup (see the module doc). Sentence ``j`` of product ``i`` is a translation of the same content
    in every region, so calling this per region (to bound memory) gives consistent twins."""
    lang = LANGS[region]
    model = vector_model(anchor_vectors())
    c_rows, iso = _content_scale(model)
    m = len(c_rows)
    specific, b_off, picks = _plan(n, seed)
    s_off = np.concatenate([[0], np.cumsum(specific)])
    noise_rng = np.random.default_rng([seed, 4, list(LANGS).index(region)])
    content_rng = np.random.default_rng(seed + 5)  # the same draws in every region
    pool_c = content_rng.standard_normal((BOILERPLATE, m)) @ c_rows / np.sqrt(m)
    pool_c += iso * content_rng.standard_normal(pool_c.shape)
    pool_v = _translate(pool_c, lang, noise_rng, model).astype(np.float32)
    spec_v = np.empty((int(s_off[-1]), c_rows.shape[1]), dtype=np.float32)
    for s in range(0, len(spec_v), chunk):
        e = min(len(spec_v), s + chunk)
        c = content_rng.standard_normal((e - s, m)) @ c_rows / np.sqrt(m)
        c += iso * content_rng.standard_normal(c.shape)
        spec_v[s:e] = _translate(c, lang, noise_rng, model)
    lookup: dict[str, np.ndarray] = {}
    for p in range(BOILERPLATE):
        lookup[_boilerplate(lang, p)] = pool_v[p]
    texts = []
    for i, line in enumerate(synth_texts(n, region, seed=seed)):
        first = f"{line}."
        lookup[first] = product_vectors[i]
        sents = [first]
        for k in range(int(s_off[i]), int(s_off[i + 1])):
            sent = _SPECIFIC[lang][k % 4].format(_coined(region, k))
            lookup[sent] = spec_v[k]
            sents.append(sent)
        sents += [_boilerplate(lang, int(p)) for p in picks[b_off[i] : b_off[i + 1]]]
        texts.append(" ".join(sents))
    return texts, lookup


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
