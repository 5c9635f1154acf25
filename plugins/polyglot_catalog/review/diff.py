"""What differs between two product texts: numbers with units, codes, colours, sizes.

Why: look-alike variants (another size, colour or pack count) are where most wrong matches are;
a reviewer should see at a glance the one phrase that differs. Values are compared in a canonical
form (``1,5 kg`` = ``1.5kg``, ``weiß`` = ``blanc`` = ``white``) so a translation is no difference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_COLOURS = {
    "white": ("white", "weiß", "weiss", "blanc", "blanche"),
    "black": ("black", "schwarz", "noir", "noire"),
    "grey": ("grey", "gray", "grau", "gris", "grise"),
    "red": ("red", "rot", "rouge"),
    "blue": ("blue", "blau", "bleu", "bleue"),
    "green": ("green", "grün", "gruen", "vert", "verte"),
    "yellow": ("yellow", "gelb", "jaune"),
    "brown": ("brown", "braun", "brun", "brune", "marron"),
    "beige": ("beige",),
    "pink": ("pink", "rosa", "rose"),
    "orange": ("orange",),
    "purple": ("purple", "lila", "violett", "violet", "violette"),
    "silver": ("silver", "silber", "argent", "argenté"),
    "gold": ("gold", "golden", "doré", "dorée", "or"),
    "turquoise": ("turquoise", "türkis"),
    "anthracite": ("anthracite", "anthrazit"),
}
_COLOUR_OF = {word: canon for canon, words in _COLOURS.items() for word in words if word != "or"}
_UNITS = r"mm|cm|m|km|kg|g|mg|ml|cl|dl|l|oz|lb|lbs|in|inch|ft|w|v|mah|gb|tb|pcs|pack|pk|%|\"|''"
_NUMBER = re.compile(rf"(?<![\w.,-])(\d+(?:[.,]\d+)?)(?:\s?({_UNITS}))?(?![\w])", re.IGNORECASE)
_CODE = re.compile(r"\b(?=[A-Z0-9-]*[A-Z])(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{2,}\b")
_SIZE = re.compile(r"(?<![\w-])(XXXS|XXS|XS|S|M|L|XL|XXL|XXXL|[2-5]XL)(?![\w-])")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
KINDS = ("numbers", "codes", "colours", "sizes")


@dataclass(frozen=True)
class Mention:
    """One value in a text: where it is, what kind, and its canonical form."""

    start: int
    end: int
    kind: str
    value: str


def _number(raw: str, unit: str | None) -> str:
    value = raw.replace(",", ".")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    unit = (unit or "").lower().replace("inch", "in").replace("lbs", "lb").replace("''", '"')
    return f"{value}{unit}"


def mentions(text: str) -> Iterator[Mention]:
    """Every number, code, colour and size mentioned in ``text``, in text order per kind."""
    text = text or ""
    for m in _NUMBER.finditer(text):
        yield Mention(m.start(), m.end(), "numbers", _number(m.group(1), m.group(2)))
    for m in _CODE.finditer(text):
        yield Mention(m.start(), m.end(), "codes", m.group(0))
    for m in _WORD.finditer(text):
        canon = _COLOUR_OF.get(m.group(0).lower())
        if canon:
            yield Mention(m.start(), m.end(), "colours", canon)
    for m in _SIZE.finditer(text):
        yield Mention(m.start(), m.end(), "sizes", m.group(0))


def differences(text_a: str, text_b: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per kind, the values only ``text_a`` has and those only ``text_b`` has (sorted); kinds
    without a difference are left out."""
    va: dict[str, set[str]] = {k: set() for k in KINDS}
    vb: dict[str, set[str]] = {k: set() for k in KINDS}
    for m in mentions(text_a):
        va[m.kind].add(m.value)
    for m in mentions(text_b):
        vb[m.kind].add(m.value)
    out = {}
    for kind in KINDS:
        only_a, only_b = sorted(va[kind] - vb[kind]), sorted(vb[kind] - va[kind])
        if only_a or only_b:
            out[kind] = (only_a, only_b)
    return out


def describe(diff: dict[str, tuple[list[str], list[str]]]) -> str:
    """A one-line summary, e.g. ``numbers: 50cm vs 60cm; colours: white vs black``."""
    return "; ".join(
        f"{kind}: {', '.join(a) or '-'} vs {', '.join(b) or '-'}" for kind, (a, b) in diff.items()
    )


def highlight(text: str, other: str) -> list[tuple[str, bool]]:
    """``text`` as segments ``(piece, differs)``: the values ``other`` lacks are flagged, so a
    template can mark them (and escape every piece)."""
    text = text or ""
    theirs: dict[str, set[str]] = {k: set() for k in KINDS}
    for m in mentions(other):
        theirs[m.kind].add(m.value)
    marks = sorted((m.start, m.end) for m in mentions(text) if m.value not in theirs[m.kind])
    out: list[tuple[str, bool]] = []
    pos = 0
    for start, end in marks:
        if start < pos:  # overlapping mentions (a code that is also a size): keep the first
            continue
        if start > pos:
            out.append((text[pos:start], False))
        out.append((text[start:end], True))
        pos = end
    if pos < len(text):
        out.append((text[pos:], False))
    return out
