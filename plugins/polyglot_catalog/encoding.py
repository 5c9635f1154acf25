"""One loaded sentence-transformers model per task, called the way its registry entry says.

Why a wrapper: every caller (embed stage, matcher, benchmarks) must apply the same Unicode NFC, the
same prompt and the same truncation, or vectors from two runs stop being comparable.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from polyglot_catalog.models.registry import DEFAULT_MODEL, load_sentence_transformer, resolve_model


def nfc(text: str) -> str:
    """Compose decomposed accents: ``e`` + U+0301 and ``é`` must tokenise (and embed) alike."""
    return unicodedata.normalize("NFC", text)


class Encoder:
    """Encode texts into L2-normalised float32 vectors with one model, loaded once.

    :param model: registry name, hub id or local folder. Defaults to the bundled multilingual-e5-small.
    :param device: ``cpu``, ``cuda``... ``None`` lets sentence-transformers pick.
    :param batch_size: texts per forward pass; sentence-transformers sorts by length within a call,
        so one call with many texts pads little.
    """

    def __init__(
        self, model: str = DEFAULT_MODEL, *, device: str | None = None, batch_size: int = 32
    ) -> None:
        self.spec = resolve_model(model)
        self.batch_size = batch_size
        self.model = load_sentence_transformer(self.spec, device=device)

    @property
    def model_name(self) -> str:
        return self.spec.name

    @property
    def dim(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    @property
    def prompt(self) -> str:
        """The text prepended to every input (the registry's, else the folder's default prompt)."""
        if self.spec.prompt is not None:
            return self.spec.prompt
        default = self.model.default_prompt_name
        return self.model.prompts.get(default, "") if default else ""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Vectors for ``texts`` in order, shape ``(len(texts), dim)``, unit length."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(
            [nfc(t) for t in texts],
            prompt=self.prompt,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text occupies with the prompt and special tokens, before truncation."""
        tokenizer = self.model.tokenizer
        encoded = tokenizer(
            [self.prompt + nfc(t) for t in texts],
            add_special_tokens=True,
            truncation=False,
            return_attention_mask=False,
        )
        return [len(ids) for ids in encoded["input_ids"]]
