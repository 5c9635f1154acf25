"""How a match run decides: the settings every stage of :mod:`.pipeline` reads, checked once.

Why a dataclass: ``match_catalog`` had grown to 19 keyword arguments handed from stage to stage;
the settings that change a decision are now one frozen value, validated on construction (the
error names the value and the options) and recorded whole in the summary's reproducibility block,
so two reports can be compared setting by setting.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from .assign import AssignMethod
from .candidates import DEFAULT_BLOCK_COLS, DEFAULT_BLOCK_ROWS, DEFAULT_HNSW_EF

CandidateSource = Literal["auto", "exact", "qdrant"]
CANDIDATE_SOURCES = ("auto", "exact", "qdrant")


@dataclass(frozen=True)
class MatchSettings:
    """Settings of one match run (see :func:`.pipeline.match_catalog` for what each one does).

    Attributes:
        k: nearest neighbours per product and direction.
        threshold: accept pairs with probability ``>= threshold``; None: label-free cut (or, with
            ``fit_on_labels``/``target_precision`` and labels, the labels' cut).
        method: one-to-one rule per region pair ("hungarian" or "mutual").
        target_precision: calibrate the cut to this precision on labels instead of max F1.
        allow_same_region: allow two SKUs of one region in a group.
        fit_on_labels: fit the scorer and the cut on the labels (else they only evaluate).
        corroborate: second scoring pass with third-region evidence (3+ regions).
        center: subtract each region's mean vector before comparing.
        text_ties: count a pair whose text equals the true twin's as correct.
        candidates: candidate path ("auto", "exact", "qdrant").
        hnsw_ef: HNSW search beam of the Qdrant path (None: the collection's default).
        block_rows, block_cols: block sizes of the exact path (its memory bound).
    """

    k: int = 10
    threshold: float | None = None
    method: AssignMethod = "hungarian"
    target_precision: float | None = None
    allow_same_region: bool = False
    fit_on_labels: bool = False
    corroborate: bool = True
    center: bool = True
    text_ties: bool = False
    candidates: CandidateSource = "auto"
    hnsw_ef: int | None = DEFAULT_HNSW_EF
    block_rows: int = DEFAULT_BLOCK_ROWS
    block_cols: int = DEFAULT_BLOCK_COLS

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1; got {self.k}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {self.threshold}")
        if self.candidates not in CANDIDATE_SOURCES:
            raise ValueError(f"candidates must be one of {CANDIDATE_SOURCES}; got {self.candidates!r}")
        if self.method not in ("hungarian", "mutual"):
            raise ValueError(f"method must be one of ('hungarian', 'mutual'); got {self.method!r}")
        if self.block_rows < 1 or self.block_cols < 1:
            raise ValueError(f"block sizes must be >= 1; got {self.block_rows} x {self.block_cols}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(cls, settings: MatchSettings | None, options: dict[str, Any]) -> MatchSettings:
        """``settings``, or settings made of keyword ``options`` (not both); unknown names are an error."""
        if settings is not None and options:
            raise TypeError(f"pass settings or keyword options, not both (got {sorted(options)})")
        if settings is not None:
            return settings
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(f"unknown match settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**options)
