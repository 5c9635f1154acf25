"""Review of uncertain matches: a decisions store in Qdrant, the review queue, and how the next
match run uses the decisions (docs/REVIEW.md). Core library: no Airflow import."""

from .store import DECISIONS, Pair, ReviewStore, review_collection, reviewed_decisions, text_hash

__all__ = ["DECISIONS", "Pair", "ReviewStore", "review_collection", "reviewed_decisions", "text_hash"]
