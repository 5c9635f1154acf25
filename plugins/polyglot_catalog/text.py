"""Turn catalog rows into the one text per row that gets embedded.

The text is built column-wise with :mod:`pyarrow.compute` (no per-row Python for the template and the
cleanup), so rendering stays cheap next to encoding. Truncation is the one step that needs the model's
tokenizer; it only touches the few rows that are over the budget, and it happens here rather than
silently inside the model so that the stored ``text`` and its content hash are exactly what was embedded.
"""

from __future__ import annotations

import logging
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

log = logging.getLogger(__name__)

TokenCounter = Callable[[Sequence[str]], list[int]]

DEFAULT_WITH_TITLE = "{title}. {description}"
DEFAULT_WITHOUT_TITLE = "{description}"

# Control characters become spaces (newlines, tabs, NUL), invisible format characters (soft hyphen,
# zero-width space, BOM) are dropped so they do not split words, then every whitespace run collapses.
_CONTROL = r"\p{Cc}"
_FORMAT = r"\p{Cf}"
_WHITESPACE_RUN = r"[\s\p{Z}]+"


@dataclass(frozen=True)
class RenderResult:
    """Texts for one batch plus how many of them had to be cut to fit the model."""

    texts: list[str]
    truncated: int


def clean_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """NFC-normalise, drop control/format characters and collapse whitespace, column-wise.

    Nulls stay null, so callers can tell "missing" from "empty after cleanup" if they care.
    """
    if not pa.types.is_string(values.type):  # large_string too: texts are joined with plain strings
        values = pc.cast(values, pa.string())
    values = pc.utf8_normalize(values, form="NFC")
    values = pc.replace_substring_regex(values, _CONTROL, " ")
    values = pc.replace_substring_regex(values, _FORMAT, "")
    values = pc.replace_substring_regex(values, _WHITESPACE_RUN, " ")
    return pc.utf8_trim_whitespace(values)


def _parse(template: str) -> tuple[str, list[tuple[str, str]], str]:
    """Split a template into (prefix, [(separator_before, field), ...], suffix)."""
    prefix, parts, pending = "", [], ""
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if field is None:
            pending += literal
            continue
        if not field.isidentifier() or spec or conversion:
            raise ValueError(
                f"template field {{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} is not supported; use plain column names like {{title}}"
            )
        if parts:
            parts.append((pending + literal, field))
        else:
            prefix = pending + literal
            parts.append(("", field))
        pending = ""
    if not parts:
        raise ValueError(f"template {template!r} names no column; e.g. '{{title}}. {{description}}'")
    return prefix, parts, pending


class TextTemplate:
    """A configurable row -> text recipe with cleanup and model-aware truncation.

    A null or empty field drops out together with the literal in front of it (and, for the first
    and last field, the text before/after it), so ``"{title}. {description}"`` renders a row without a
    title as just its description and ``"{description} ({brand})"`` one without a brand without "()".

    Args:
        template (str | None): ``str.format``-style template over column names. Defaults to
            ``"{title}. {description}"`` when the batch has a ``title`` column, else ``"{description}"``.
        max_tokens (int | None): token budget per text, usually the model's ``max_seq_length``.
            Defaults to None (no truncation).
        count_tokens (Callable | None): counts tokens for a list of texts, usually
            ``Encoder.count_tokens``. Needed for truncation. Defaults to None.

    Examples:
        ```py
        tpl = TextTemplate("{brand} {title}. {description}", max_tokens=512, count_tokens=enc.count_tokens)
        texts = tpl.render(record_batch)
        tpl.truncated  # rows cut so far
        ```
    """

    def __init__(
        self,
        template: str | None = None,
        *,
        max_tokens: int | None = None,
        count_tokens: TokenCounter | None = None,
    ) -> None:
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
        if max_tokens is not None and count_tokens is None:
            raise ValueError("max_tokens needs count_tokens (e.g. Encoder.count_tokens) to measure texts")
        if template is not None:
            _parse(template)  # fail at construction, not on the first batch
        self.template = template
        self.max_tokens = max_tokens
        self.count_tokens = count_tokens
        self.truncated = 0

    def resolve(self, columns: Iterable[str]) -> str:
        """The template string in effect for a batch with these columns (part of the content hash)."""
        if self.template is not None:
            return self.template
        return DEFAULT_WITH_TITLE if "title" in set(columns) else DEFAULT_WITHOUT_TITLE

    def fields(self, columns: Iterable[str]) -> list[str]:
        """Columns the template reads, for column projection."""
        _, parts, _ = _parse(self.resolve(columns))
        return [field for _, field in parts]

    def render(self, batch: pa.RecordBatch | pa.Table) -> list[str]:
        """One cleaned (and, if configured, truncated) text per row."""
        return self.render_with_stats(batch).texts

    def render_with_stats(self, batch: pa.RecordBatch | pa.Table) -> RenderResult:
        """Like :meth:`render`, also returning how many rows of this batch were truncated."""
        texts = self.render_array(batch).to_pylist()
        texts, cut = self.truncate(texts)
        self.truncated += cut
        return RenderResult(texts, cut)

    def render_array(self, batch: pa.RecordBatch | pa.Table) -> pa.Array:
        """The untruncated texts as a pyarrow string array (vectorised)."""
        prefix, parts, suffix = _parse(self.resolve(batch.schema.names))
        missing = [field for _, field in parts if field not in batch.schema.names]
        if missing:
            raise ValueError(f"template fields {missing} not in columns {batch.schema.names}")
        n = batch.num_rows
        text = pa.array([""] * n, pa.string())
        any_before = pa.array([False] * n)
        last = len(parts) - 1
        for i, (separator, field) in enumerate(parts):
            value = pc.fill_null(clean_text(batch.column(field)), "")
            present = pc.greater(pc.utf8_length(value), 0)
            if i == 0 and prefix:
                value = pc.if_else(present, pc.binary_join_element_wise(prefix, value, ""), value)
            if i == last and suffix:
                value = pc.if_else(present, pc.binary_join_element_wise(value, suffix, ""), value)
            if separator:
                joined = pc.binary_join_element_wise(separator, value, "")
                value = pc.if_else(pc.and_(present, any_before), joined, value)
            text = pc.binary_join_element_wise(text, value, "")
            any_before = pc.or_(any_before, present)
        return clean_text(text)

    def truncate(self, texts: list[str]) -> tuple[list[str], int]:
        """Cut texts over ``max_tokens`` at word boundaries; returns (texts, how many were cut)."""
        if self.max_tokens is None or self.count_tokens is None or not texts:
            return texts, 0
        counts = self.count_tokens(texts)
        over = {i: c for i, c in enumerate(counts) if c > self.max_tokens}
        if not over:
            return texts, 0
        out = list(texts)
        words = {i: texts[i].split(" ") for i in over}
        keep = {i: _guess_keep(len(words[i]), over[i], self.max_tokens) for i in over}
        while over:
            candidates = {i: " ".join(words[i][: keep[i]]) for i in over}
            order = list(candidates)
            new_counts = self.count_tokens([candidates[i] for i in order])
            still = {}
            for i, count in zip(order, new_counts, strict=True):
                if count <= self.max_tokens or keep[i] <= 1:
                    out[i] = candidates[i]
                else:
                    keep[i] = min(keep[i] - 1, _guess_keep(keep[i], count, self.max_tokens))
                    still[i] = count
            over = still
        log.debug("truncated %d of %d texts to %d tokens", len(words), len(texts), self.max_tokens)
        return out, len(words)

    def __repr__(self) -> str:
        return f"TextTemplate({self.template!r}, max_tokens={self.max_tokens})"


def _guess_keep(n_words: int, n_tokens: int, budget: int) -> int:
    """Words to keep so the text likely fits, with a small margin so one recount usually suffices."""
    return max(1, int(n_words * budget / n_tokens * 0.95))
