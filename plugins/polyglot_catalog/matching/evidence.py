"""Evidence that survives translation: quantities with units, codes, proper names, GTINs.

Everything here is rule-based and language-agnostic on purpose (no per-example constants): units
are converted to one base unit per dimension, so ``60x120 cm`` on a German page and ``23 5/8x47 1/4"``
on a US page meet as the same lengths.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: unit -> (dimension, factor to the base unit); temperatures are handled separately.
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.1),
    "cm": ("length", 1.0),
    "m": ("length", 100.0),
    "in": ("length", 2.54),
    "inch": ("length", 2.54),
    "inches": ("length", 2.54),
    '"': ("length", 2.54),
    "''": ("length", 2.54),
    "″": ("length", 2.54),
    "ft": ("length", 30.48),
    "'": ("length", 30.48),
    "g": ("mass", 1.0),
    "kg": ("mass", 1000.0),
    "lb": ("mass", 453.592),
    "lbs": ("mass", 453.592),
    "oz": ("mass", 28.3495),
    "ml": ("volume", 1.0),
    "cl": ("volume", 10.0),
    "dl": ("volume", 100.0),
    "l": ("volume", 1000.0),
    "gal": ("volume", 3785.41),
    "qt": ("volume", 946.353),
    "fl oz": ("volume", 29.5735),
    "w": ("power", 1.0),
    "kw": ("power", 1000.0),
    "v": ("voltage", 1.0),
    "lm": ("lumen", 1.0),
    "%": ("percent", 1.0),
    "mah": ("charge", 1.0),
    "°c": ("temperature", 1.0),
    "°f": ("temperature", 1.0),
    "°": ("temperature", 1.0),
}
#: two quantities agree when within this relative tolerance (sites round converted units).
REL_TOL = 0.04

_NUM = r"\d+(?:[.,]\d+)?(?:\s+\d/\d+)?|\d/\d+"
_UNIT_ALT = "|".join(
    re.escape(u) for u in sorted(UNITS, key=len, reverse=True) if u not in {'"', "''", "″", "'", "%"}
)
_UNIT_RE = rf"(?:(?:{_UNIT_ALT})(?![A-Za-zÀ-ÿ])|\"|''|″|'|%)"
_DIM_RE = re.compile(
    rf"({_NUM})\s*(?:{_UNIT_RE})?\s*[x×]\s*({_NUM})(?:\s*(?:{_UNIT_RE})?\s*[x×]\s*({_NUM}))?"
    rf"\s*({_UNIT_RE})?",
    re.IGNORECASE,
)
_QTY_RE = re.compile(rf"(?<![\w.,/])({_NUM})\s*({_UNIT_RE})", re.IGNORECASE)
_TOKEN_RE = re.compile(r"[\w][\w.\-/]*[\w]|[\w]", re.UNICODE)
# a code mixes digits with letters other than a dimension's "x" (AB-1234, B07X1), or is an
# IKEA-style article number 802.758.87
_CODE_RE = re.compile(r"^(?=.*\d)(?=.*[A-WYZa-wyz])[A-Za-z0-9\-/.]{4,}$|^\d{3}[.\-]\d{3}[.\-]\d{2}$")
_GTIN_RE = re.compile(r"\D")


#: The one empty frozenset every evidence without codes or names shares (CPython builds a new one,
#: 216 bytes, for every ``frozenset()``).
_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Quantity:
    """A number in a base unit (cm, g, ml, W, °C, %...) with the dimension it measures."""

    dimension: str
    value: float


@dataclass(slots=True)
class TextEvidence:
    """What one product text offers for cross-lingual comparison.

    Immutable containers and slots: a match holds one per product until its pair features are
    computed, and most texts have no codes or few names, so the empty ones are shared objects
    (:data:`_EMPTY`, ``()``) where each empty ``set`` took 216 bytes (dev catalog texts: 764 -> 206
    bytes a product, deep size; tests/test_matching_evidence.py)."""

    quantities: tuple[Quantity, ...] = ()
    codes: frozenset[str] = _EMPTY
    names: frozenset[str] = _EMPTY
    gtin: str | None = None


def _parse_number(raw: str) -> float:
    raw = raw.strip().replace(",", ".")
    total = 0.0
    for part in raw.split():
        if "/" in part:
            num, den = part.split("/")
            total += float(num) / float(den) if float(den) else 0.0
        else:
            total += float(part)
    return total


def _to_base(value: float, unit: str) -> Quantity | None:
    u = unit.lower().strip()
    if u == "°f":
        return Quantity("temperature", (value - 32.0) * 5.0 / 9.0)
    spec = UNITS.get(u)
    return None if spec is None else Quantity(spec[0], value * spec[1])


def extract_quantities(text: str) -> list[Quantity]:
    """Numbers with units and ``AxB[xC] unit`` dimensions, converted to base units.

    Examples:
        ```py
        extract_quantities("Tisch 60x120 cm")  # [length 60, length 120]
        extract_quantities("table 23 5/8 x 47 1/4 \\"")  # lengths 60.0, 120.0 (cm)
        ```
    """
    text = unicodedata.normalize("NFKC", text)
    out: list[Quantity] = []
    spans: list[tuple[int, int]] = []
    for m in _DIM_RE.finditer(text):
        if not m.group(4):
            continue
        for g in (1, 2, 3):
            if m.group(g):
                q = _to_base(_parse_number(m.group(g)), m.group(4))
                if q is not None:
                    out.append(q)
        spans.append(m.span())
    for m in _QTY_RE.finditer(text):
        if any(s <= m.start() < e for s, e in spans):
            continue
        q = _to_base(_parse_number(m.group(1)), m.group(2))
        if q is not None:
            out.append(q)
    return out


def is_name_token(tok: str) -> bool:
    """Brand/product-name shape: two or more capitals (KALLAX, POÄNG, AIRism, HEATTECH)."""
    letters = [c for c in tok if c.isalpha()]
    return len(letters) >= 2 and sum(c.isupper() for c in letters) >= 2 and not tok.isdigit()


def tokens(text: str) -> list[str]:
    """Word tokens after NFC; keeps inner dots/dashes so article numbers stay whole."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFC", text))


def normalise_gtin(value: object) -> str | None:
    """Digits only, left-padded to GTIN-14; ``None`` for empty or implausible values."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    digits = _GTIN_RE.sub("", str(value))
    return digits.zfill(14) if 8 <= len(digits) <= 14 else None


def extract(
    text: str, *, title: str | None = None, brand: str | None = None, gtin: object = None
) -> TextEvidence:
    """All evidence of one product: quantities, codes, name tokens (from text, title, brand), GTIN."""
    full = " ".join(x for x in (title, brand, text) if x)
    toks = tokens(full)
    names = {t.casefold() for t in toks if is_name_token(t)}
    if brand:
        names |= {t.casefold() for t in tokens(brand)}
    codes = {re.sub(r"[.\-/]", "", t).upper() for t in toks if _CODE_RE.match(t)}
    return TextEvidence(
        tuple(extract_quantities(full)), _frozen(codes), _frozen(names - codes), normalise_gtin(gtin)
    )


def evidence_json(ev: TextEvidence) -> str:
    """``ev`` as JSON (floats as their shortest repr, so :func:`evidence_from_json` gives it back
    exactly): what a plan stores once per product for the feature tasks (:mod:`.feature_parts`)."""
    return json.dumps(
        {
            "q": [[q.dimension, q.value] for q in ev.quantities],
            "c": sorted(ev.codes),
            "n": sorted(ev.names),
            "g": ev.gtin,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def evidence_from_json(text: str) -> TextEvidence:
    """The :class:`TextEvidence` :func:`evidence_json` wrote."""
    d = json.loads(text)
    return TextEvidence(
        tuple(Quantity(dim, float(v)) for dim, v in d["q"]),
        _frozen(set(d["c"])),
        _frozen(set(d["n"])),
        d["g"],
    )


def _frozen(items: set[str]) -> frozenset[str]:
    """``items`` frozen, an empty one as :data:`_EMPTY`."""
    return frozenset(items) if items else _EMPTY


def _match_quantities(qa: Sequence[Quantity], qb: Sequence[Quantity]) -> tuple[int, int, int, int]:
    """Greedy one-to-one matching of quantities of the same dimension within :data:`REL_TOL`.

    Returns ``(matched, comparable, shared_dims, conflicting_dims)``: a dimension both sides mention
    conflicts when the side with fewer quantities of it has one without a counterpart (77x147 cm
    vs 77x77 cm: same line, another size - a variant, not a duplicate).
    """
    used: set[int] = set()
    matched_a: set[int] = set()
    for i, q in enumerate(qa):
        for j, r in enumerate(qb):
            if j in used or q.dimension != r.dimension:
                continue
            tol = max(
                REL_TOL * max(abs(q.value), abs(r.value)), 0.55 if q.dimension == "temperature" else 1e-6
            )
            if abs(q.value - r.value) <= tol:
                used.add(j)
                matched_a.add(i)
                break
    shared = {q.dimension for q in qa} & {q.dimension for q in qb}
    comparable = conflicts = 0
    for dim in shared:
        na = sum(q.dimension == dim for q in qa)
        nb = sum(q.dimension == dim for q in qb)
        hits = sum(qa[i].dimension == dim for i in matched_a)
        comparable += min(na, nb)
        conflicts += hits < min(na, nb)
    return len(used), comparable, len(shared), conflicts


def idf_weights(evidences: Iterable[TextEvidence]) -> dict[str, float]:
    """Smoothed IDF of name tokens over all products: a name every page carries proves little."""
    df: Counter[str] = Counter()
    n = 0
    for ev in evidences:
        n += 1
        df.update(ev.names)
    return idf_from_counts(n, df)


def idf_from_counts(n: int, df: Mapping[str, int]) -> dict[str, float]:
    """:func:`idf_weights` from counts (``n`` products, ``df`` per name): counts of parts add up, so
    region files counted apart give the same weights (:mod:`.feature_parts`)."""
    return {t: math.log((1 + n) / (1 + c)) + 1.0 for t, c in df.items()}


@dataclass
class PairEvidence:
    """Evidence for one candidate pair; each value is a float in [0, 1] plus a human explanation."""

    ev_numbers: float
    ev_codes: float
    ev_names: float
    ev_gtin: float
    conflict_numbers: float
    conflict_gtin: float
    explain: str


def compare(a: TextEvidence, b: TextEvidence, idf: dict[str, float] | None = None) -> PairEvidence:
    """Score how far two products' evidence agrees, and say why in a short string."""
    idf = idf or {}
    why: list[str] = []
    matched, comparable, dims, conflicts = _match_quantities(a.quantities, b.quantities)
    ev_numbers = matched / comparable if comparable else 0.0
    conflict_numbers = conflicts / dims if dims else 0.0
    if matched:
        why.append(f"{matched}/{comparable} quantities agree")
    if conflicts:
        why.append(f"quantities differ in {conflicts} dimension(s)")
    shared_codes = a.codes & b.codes
    ev_codes = len(shared_codes) / min(len(a.codes), len(b.codes)) if a.codes and b.codes else 0.0
    if shared_codes:
        why.append("codes " + ", ".join(sorted(shared_codes)[:3]))
    shared = a.names & b.names
    union = a.names | b.names
    ev_names = 0.0
    if union:
        ev_names = sum(idf.get(t, 1.0) for t in shared) / sum(idf.get(t, 1.0) for t in union)
    if shared:
        why.append("names " + ", ".join(sorted(shared, key=lambda t: -idf.get(t, 1.0))[:3]))
    ev_gtin = conflict_gtin = 0.0
    if a.gtin and b.gtin:
        ev_gtin, conflict_gtin = (1.0, 0.0) if a.gtin == b.gtin else (0.0, 1.0)
        why.append("same GTIN" if ev_gtin else "GTINs differ")
    return PairEvidence(
        ev_numbers, ev_codes, ev_names, ev_gtin, conflict_numbers, conflict_gtin, "; ".join(why)
    )


EVIDENCE_COLUMNS = ("ev_numbers", "ev_codes", "ev_names", "ev_gtin", "conflict_numbers", "conflict_gtin")
