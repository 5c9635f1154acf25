"""One region's sentence vectors as the matcher compares them: IDF weights, the centred int8 copy
and the statistics an incremental run freezes (``sent_mean``, ``sent_keys``, ``sent_df``).

Why a function of its own: the single task (:func:`.pipeline.prepare`) and the plan of a mapped
full run (:mod:`.feature_parts`, one region at a time) must give the feature tasks the same bits.
"""

from __future__ import annotations

from typing import Any

from ..sentences import SentenceVectors, split_sentences
from .alignment import center_sentences, row_idf, sentence_idf, sentence_mean
from .context import sentence_frequencies

#: Weigh each sentence by its smoothed IDF over the region's products (boilerplate weighs little).
IDF_SENTENCES = True


def centred_region_sentences(sv: SentenceVectors, texts: list[str]) -> tuple[SentenceVectors, dict[str, Any]]:
    """``sv`` (rows follow ``texts``) IDF-weighted, centred on the region's mean and stored int8, and
    the region's statistics. IDF weights of indexed (distinct-row) vectors come from the index
    itself, so the texts are not split again; vectors with one row per occurrence take
    :func:`.alignment.sentence_idf` of the texts."""
    if IDF_SENTENCES and sv.weights is None:
        if sv.index is not None:
            sv = SentenceVectors(sv.offsets, sv.vectors, row_idf(sv), sv.index)
        else:
            idf = sentence_idf(texts)
            if len(idf) == len(sv.vectors):  # rows follow split_sentences (else: caller's own rows)
                sv = SentenceVectors(sv.offsets, sv.vectors, idf)
    mean = sentence_mean(sv)
    keys, df = sentence_frequencies([split_sentences(t) for t in texts])
    return center_sentences(sv, mean=mean), {"sent_mean": mean, "sent_keys": keys, "sent_df": df}
