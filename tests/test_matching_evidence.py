"""Evidence extraction across languages: the same quantities, names and codes meet after conversion."""

from __future__ import annotations

import pytest

from polyglot_catalog.matching.evidence import compare, extract, extract_quantities, normalise_gtin


def _lengths(text: str) -> list[float]:
    return sorted(round(q.value, 1) for q in extract_quantities(text) if q.dimension == "length")


@pytest.mark.parametrize(
    "text",
    [
        "Tisch 60x120 cm",
        "table 60 x 120 cm",
        "Table 60 × 120 cm .",
        "Plateau de 600x1200 mm",
        'desk 23 5/8x47 1/4 "',
    ],
)
def test_dimensions_normalise_to_centimetres(text: str) -> None:
    assert _lengths(text) == [60.0, 120.0]


def test_units_convert_between_us_and_metric_pages() -> None:
    us = extract("Withstands temperatures up to 428°F . Holds 2.2 lb .")
    de = extract("Hitzebeständig bis 220°C . Trägt 1 kg .")
    ev = compare(us, de)
    assert ev.ev_numbers == 1.0
    assert ev.conflict_numbers == 0.0
    assert "2/2 quantities agree" in ev.explain


def test_decimal_comma_and_spaced_degree_sign() -> None:
    assert [round(q.value, 1) for q in extract_quantities("Gewicht 2,5 kg")] == [2500.0]
    assert [(q.dimension, q.value) for q in extract_quantities("Lavage 40 ° C maximum")] == [
        ("temperature", 40.0)
    ]


def test_different_size_is_a_conflict_not_a_match() -> None:
    ev = compare(extract("KALLAX shelf unit 77x147 cm"), extract("Regal KALLAX 77x77 cm"))
    assert ev.ev_names == 1.0  # same product line ...
    assert ev.ev_numbers == 0.5 and ev.conflict_numbers == 1.0  # ... but another size: a variant
    ev2 = compare(extract("Lampe 10 W"), extract("lamp 40 W"))
    assert ev2.conflict_numbers == 1.0 and ev2.ev_numbers == 0.0
    assert "differ" in ev2.explain


def test_names_survive_translation_and_are_idf_weighted() -> None:
    de = extract("Kann mit dem POÄNG Hocker kombiniert werden . AIRism Material .")
    fr = extract("À combiner avec le repose-pieds POÄNG . Matière AIRism .")
    assert {"poäng", "airism"} <= de.names & fr.names
    rare = compare(de, fr, idf={"poäng": 5.0, "airism": 5.0})
    assert rare.ev_names == 1.0
    assert "poäng" in rare.explain


def test_article_codes_match_regardless_of_separators() -> None:
    a, b = extract("Art. 802.758.87 , model AB-1234"), extract("Artikel 802-758-87 AB-1234")
    assert compare(a, b).ev_codes == 1.0
    assert "60X120" not in extract("60x120 cm").codes  # a dimension is not a code


def test_gtin_equality_and_conflict() -> None:
    assert normalise_gtin("4002515-123456") == "00004002515123456"[-14:]
    assert normalise_gtin(None) is None and normalise_gtin("12") is None
    same = compare(extract("a", gtin="0012345678905"), extract("b", gtin="12345678905"))
    assert same.ev_gtin == 1.0 and same.conflict_gtin == 0.0
    diff = compare(extract("a", gtin="12345678905"), extract("b", gtin="12345678912"))
    assert diff.ev_gtin == 0.0 and diff.conflict_gtin == 1.0


def test_evidence_is_compact_and_cannot_be_changed_by_a_later_stage() -> None:
    """A match holds one evidence per product until the pair features exist (900k of them at 300k x
    3): it must not carry a dict or a fresh empty set per product, and a stage that reads it must
    not be able to change what the next stage sees."""
    import sys

    plain = [extract(f"Soft cotton towel, machine washable, set number {i}") for i in range(50)]
    assert all(not e.codes for e in plain)
    assert len({id(e.codes) for e in plain}) == 1  # one shared empty set, not 50 of 216 bytes
    ev = extract("KALLAX shelf 77x147 cm, article 802.758.87")
    assert not hasattr(ev, "__dict__") and sys.getsizeof(ev) <= 80
    assert isinstance(ev.codes, frozenset) and isinstance(ev.names, frozenset)
    assert isinstance(ev.quantities, tuple)
    with pytest.raises(AttributeError):
        ev.codes.add("X")  # type: ignore[attr-defined]
    # set algebra across evidences works as before (compare relies on it)
    other = extract("KALLAX Regal 77x147 cm, Artikel 802-758-87")
    assert ev.codes & other.codes == {"80275887"}


@pytest.mark.parametrize(
    "text, kw",
    [
        ("Tisch Eiche 60x120 cm, 23 5/8 in, AB-1234 802.758.87", {"title": "Ödla", "brand": "IKEA"}),
        ("lampe 40 W 230 V blanc", {"gtin": "4006381333931"}),
        ("", {}),
    ],
)
def test_evidence_stored_as_json_comes_back_exactly(text: str, kw: dict) -> None:
    from polyglot_catalog.matching.evidence import evidence_from_json, evidence_json

    ev = extract(text, **kw)
    back = evidence_from_json(evidence_json(ev))
    assert back == ev and [q.value for q in back.quantities] == [q.value for q in ev.quantities]
