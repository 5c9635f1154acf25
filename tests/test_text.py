"""Text building: template semantics, Unicode/whitespace cleanup, truncation to the model budget."""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pytest
from fakes import FakeEncoder

from polyglot_catalog.text import TextTemplate, clean_text


def test_default_uses_title_when_the_column_exists() -> None:
    batch = pa.record_batch({"title": ["BILLY", None, ""], "description": ["Bookcase", "Shelf", "Box"]})
    assert TextTemplate().render(batch) == ["BILLY. Bookcase", "Shelf", "Box"]
    assert TextTemplate().resolve(batch.schema.names) == "{title}. {description}"


def test_default_without_title_is_the_description() -> None:
    batch = pa.record_batch({"description": ["Bookcase , white"], "brand": ["IKEA"]})
    assert TextTemplate().render(batch) == ["Bookcase , white"]
    assert TextTemplate().resolve(batch.schema.names) == "{description}"


def test_missing_field_drops_its_surrounding_literals() -> None:
    batch = pa.record_batch({"description": ["Sofa", "Lamp"], "brand": ["IKEA", None]})
    assert TextTemplate("{description} ({brand})").render(batch) == ["Sofa (IKEA)", "Lamp"]
    assert TextTemplate("Brand: {brand} | {description}").render(batch) == ["Brand: IKEA | Sofa", "Lamp"]


def test_nfc_and_whitespace_cleanup() -> None:
    decomposed = unicodedata.normalize("NFD", "Café crème")
    batch = pa.record_batch({"description": [f"  {decomposed}\n\twith\u00a0 soft\u00adhyphen\x00end  "]})
    (text,) = TextTemplate().render(batch)
    assert text == "Café crème with softhyphen end"
    assert unicodedata.is_normalized("NFC", text)


def test_clean_text_keeps_nulls_and_casts_non_strings() -> None:
    assert clean_text(pa.array([None, " a  b "])).to_pylist() == [None, "a b"]
    assert clean_text(pa.array([12, None])).to_pylist() == ["12", None]


def test_template_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"\{title:>10\}"):
        TextTemplate("{title:>10}")
    with pytest.raises(ValueError, match="names no column"):
        TextTemplate("just text")
    with pytest.raises(ValueError, match=r"\['brand'\] not in columns"):
        TextTemplate("{brand}").render(pa.record_batch({"description": ["x"]}))
    with pytest.raises(ValueError, match="count_tokens"):
        TextTemplate(max_tokens=10)


def test_truncation_cuts_only_long_texts_and_counts_them() -> None:
    enc = FakeEncoder(max_seq_length=12)
    long = " ".join(f"w{i}" for i in range(40))
    batch = pa.record_batch({"description": ["short text", long, long + " more"]})
    tpl = TextTemplate(max_tokens=enc.max_seq_length, count_tokens=enc.count_tokens)
    result = tpl.render_with_stats(batch)
    assert result.texts[0] == "short text"
    assert result.truncated == 2 and tpl.truncated == 2
    counts = enc.count_tokens(result.texts[1:])
    assert all(c <= 12 for c in counts)
    assert all(long.startswith(t) for t in result.texts[1:])
    # cut no more than needed: one more word would be over budget
    assert enc.count_tokens([" ".join(long.split()[: len(result.texts[1].split()) + 1])])[0] > 12


def test_renders_tables_too() -> None:
    table = pa.table({"description": ["a", "b"]})
    assert TextTemplate("{description}!").render(table) == ["a!", "b!"]
