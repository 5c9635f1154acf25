"""A cross-encoder re-ranker trained on the same catalog pairs as the tuned encoder.

Why: after tuning, most remaining top-1 errors are sibling variants whose texts differ in one phrase
and whose cosines sit within 0.05 of each other. A bi-encoder compresses each text to one vector
before comparing; a cross-encoder reads both texts together and can weigh the one phrase that
differs. It is too slow to compare every pair, so it only re-scores each product's top candidates
(the matcher's own), and its score enters the matcher as one more feature (``rerank``).

No multilingual cross-encoder ships in a package, so it starts from the bundled encoder's weights
(a new one-logit head) and learns from positives plus hard negatives mined from the encoder's
candidates among training products only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polyglot_catalog.matching.candidates import exact_topk
from polyglot_catalog.tuning.train import PRECISIONS, _resolve_device, encode

log = logging.getLogger(__name__)
DEFAULT_RERANK_NAME = "catalog-reranker"
RerankFn = Callable[[str, str, Sequence[str], Sequence[str]], np.ndarray]


@dataclass
class RerankConfig:
    """Re-ranker training knobs. ``negatives`` hard negatives per positive; budgets as in TuneConfig."""

    max_steps: int = 300
    max_minutes: float | None = 10.0
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 3e-5
    warmup_ratio: float = 0.1
    negatives: int = 3
    candidates: int = 10
    max_length: int = 256
    eval_steps: int = 50
    precision: str | None = None
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {self.precision!r}")
        for name in ("max_steps", "batch_size", "negatives", "candidates", "max_length", "eval_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.negatives >= self.candidates:
            raise ValueError(
                f"negatives ({self.negatives}) must be fewer than candidates ({self.candidates})"
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0; got {self.max_minutes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RerankOutcome:
    steps: int
    seconds: float
    examples: int
    device: str
    precision: str
    val_before: dict[str, float] = field(default_factory=dict)
    val_after: dict[str, float] = field(default_factory=dict)


def candidate_lists(encoder: Any, pairs: pd.DataFrame, pool: pd.DataFrame, k: int) -> list[list[str]]:
    """Per pair, the encoder's top-``k`` texts of ``region_b`` for ``text_a`` that are not the twin.

    ``pool`` (``region, text, component``) is the only source of candidates; a candidate of the
    pair's own product group, with the twin's or the anchor's exact text, or forming a text pair that
    is some other product's positive, is skipped (the catalog repeats generic texts across products:
    the same two texts must never be labelled both ways).
    """
    out: list[list[str]] = [[] for _ in range(len(pairs))]
    if pairs.empty:
        return out
    positives = {frozenset(p) for p in zip(pairs["text_a"], pairs["text_b"], strict=True)}
    distinct = sorted(set(pool["text"]) | set(pairs["text_a"]))
    vectors = dict(zip(distinct, encode(encoder, distinct), strict=True))
    for region, sub in pairs.groupby("region_b", sort=True):
        cand = pool[pool["region"] == region].reset_index(drop=True)
        if cand.empty:
            continue
        corpus = np.stack([vectors[t] for t in cand["text"]])
        idx, _ = exact_topk(np.stack([vectors[t] for t in sub["text_a"]]), corpus, min(k + 2, len(cand)))
        texts, comps = cand["text"].to_numpy(), cand["component"].to_numpy()
        for row, (pos, comp, anchor, twin) in enumerate(
            zip(sub.index, sub["component"], sub["text_a"], sub["text_b"], strict=True)
        ):
            picked = [
                str(texts[j])
                for j in idx[row]
                if comps[j] != comp
                and texts[j] not in (twin, anchor)
                and frozenset((anchor, texts[j])) not in positives
            ]
            out[pairs.index.get_loc(pos)] = list(dict.fromkeys(picked))[:k]
    return out


def _oriented(pairs: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Each pair once, with a random side as the query: the matcher asks in both directions."""
    flip = np.random.default_rng(seed).random(len(pairs)) < 0.5
    out = pairs.reset_index(drop=True).copy()
    for x, y in (("region_a", "region_b"), ("text_a", "text_b")):
        out.loc[flip, [x, y]] = out.loc[flip, [y, x]].to_numpy()
    return out


def training_examples(
    encoder: Any, pairs: pd.DataFrame, pool: pd.DataFrame, negatives: int, seed: int = 0
) -> pd.DataFrame:
    """``text_a, text_b, label`` rows: each pair's positive and its ``negatives`` hardest negatives."""
    oriented = _oriented(pairs, seed)
    lists = candidate_lists(encoder, oriented, pool, negatives)
    rows = []
    for a, b, negs in zip(oriented["text_a"], oriented["text_b"], lists, strict=True):
        rows.append((a, b, 1.0))
        rows.extend((a, n, 0.0) for n in negs)
    return pd.DataFrame(rows, columns=["text_a", "text_b", "label"])


def validation_samples(
    encoder: Any, val_pairs: pd.DataFrame, pool: pd.DataFrame, k: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Re-ranking samples for the validation products: the twin among the encoder's top candidates.

    Candidates come from the training pool plus the validation texts themselves (the products a
    validation query is really confused with); no validation pair is trained on.
    """
    if val_pairs.empty:
        return []
    oriented = _oriented(val_pairs, seed)
    sides = [
        pd.DataFrame(
            {
                "region": oriented[f"region_{s}"],
                "text": oriented[f"text_{s}"],
                "component": oriented["component"],
            }
        )
        for s in ("a", "b")
    ]
    full = pd.concat([pool[["region", "text", "component"]], *sides], ignore_index=True).drop_duplicates()
    lists = candidate_lists(encoder, oriented, full, k - 1)
    return [
        {"query": a, "positive": [b], "negative": negs}
        for a, b, negs in zip(oriented["text_a"], oriented["text_b"], lists, strict=True)
        if negs
    ]


def load_cross_encoder(
    source: str | Path, *, max_length: int | None = None, device: str | None = None
) -> Any:
    """A CrossEncoder from a re-ranker folder, or a new one (one-logit head) over an encoder's weights."""
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(
        str(source), num_labels=1, max_length=max_length, device=device, local_files_only=True
    )


def train_reranker(
    base: str | Path,
    encoder: Any,
    train_pairs: pd.DataFrame,
    val_pairs: pd.DataFrame,
    pool: pd.DataFrame,
    config: RerankConfig,
    work_dir: Path,
) -> tuple[Any, RerankOutcome]:
    """Train a cross-encoder from ``base``'s weights; ``encoder`` mines the candidates it learns on.

    Mine with the encoder the matcher will use (the tuned one), so the negatives are the confusions
    the re-ranker will see. ``pool`` holds the training split's texts only. Returns the model (best
    validation MRR@k checkpoint when there are validation pairs) and what happened.
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback

    if train_pairs.empty:
        raise ValueError("no training pairs for the re-ranker")
    device, precision = _resolve_device(config)
    t0 = time.monotonic()
    examples = training_examples(encoder, train_pairs, pool, config.negatives, config.seed)
    samples = validation_samples(encoder, val_pairs, pool, config.candidates, config.seed)
    log.info(
        "rerank: %d examples (%d positives), %d validation queries, mined in %.0fs",
        len(examples),
        int(examples["label"].sum()),
        len(samples),
        time.monotonic() - t0,
    )
    model = load_cross_encoder(base, max_length=config.max_length, device=device)
    evaluator = (
        CrossEncoderRerankingEvaluator(
            samples, at_k=config.candidates, name="val", write_csv=False, batch_size=256
        )
        if samples
        else None
    )
    key = f"val_mrr@{config.candidates}"
    val_before = {key: float(evaluator(model)[key])} if evaluator else {}
    total = max(1, min(config.max_steps, int(config.epochs * len(examples) / config.batch_size)))
    eval_steps = min(config.eval_steps, total)
    budget = config.max_minutes

    class Budget(TrainerCallback):
        """Stops at the time budget and logs progress (the task log under Airflow)."""

        start = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if budget is not None and time.monotonic() - self.start > budget * 60:
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log.info("rerank step %d/%d loss %.4f", state.global_step, total, logs["loss"])

    args = CrossEncoderTrainingArguments(
        output_dir=str(work_dir),
        max_steps=total,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_ratio * total),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        eval_strategy="steps" if evaluator else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if evaluator else "no",
        save_steps=eval_steps,
        save_total_limit=2,
        save_only_model=True,
        load_best_model_at_end=bool(evaluator),
        metric_for_best_model=f"eval_{key}" if evaluator else None,
        greater_is_better=True,
        logging_steps=max(1, min(10, eval_steps)),
        report_to="none",
        seed=config.seed,
        disable_tqdm=True,
    )
    dataset = Dataset.from_pandas(examples, preserve_index=False)
    # positives are 1 in (1 + negatives): weight them up so the head does not learn "always no"
    loss = BinaryCrossEntropyLoss(model, pos_weight=_pos_weight(config.negatives))
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator, callbacks=[Budget()]
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    t1 = time.monotonic()
    state = trainer.train()
    seconds = time.monotonic() - t1
    val_after = {key: float(evaluator(model)[key])} if evaluator else {}
    log.info(
        "rerank: %d steps in %.0fs; validation %s -> %s", state.global_step, seconds, val_before, val_after
    )
    outcome = RerankOutcome(
        int(state.global_step), seconds, len(examples), device, precision, val_before, val_after
    )
    return model, outcome


def _pos_weight(negatives: int) -> Any:
    import torch

    return torch.tensor(float(negatives))


class CachedReranker:
    """Scores ``(query text, candidate text)`` pairs once each; the matcher's ``rerank`` callback.

    The same text pair recurs across directions and candidate lists, so scores are cached by text.
    Calling it as ``rerank(region_a, region_b, texts_a, texts_b)`` returns one logit per pair.
    """

    def __init__(self, model: Any, batch_size: int = 128) -> None:
        self.model, self.batch_size = model, batch_size
        self.cache: dict[tuple[str, str], float] = {}

    def scores(self, texts_a: Sequence[str], texts_b: Sequence[str]) -> np.ndarray:
        keys = list(zip(texts_a, texts_b, strict=True))
        todo = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if todo:
            values = self.model.predict(
                todo, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
            )
            self.cache.update(zip(todo, np.asarray(values, dtype=np.float64).ravel().tolist(), strict=True))
        return np.array([self.cache[k] for k in keys], dtype=np.float64)

    def __call__(
        self, region_a: str, region_b: str, texts_a: Sequence[str], texts_b: Sequence[str]
    ) -> np.ndarray:
        return self.scores(texts_a, texts_b)


def rerank_topk(
    scorer: CachedReranker, queries: Sequence[str], candidates: Sequence[Sequence[str]]
) -> list[list[str]]:
    """Each query's candidates sorted by the cross-encoder (best first; ties keep the encoder order)."""
    flat_a = [q for q, cs in zip(queries, candidates, strict=True) for _ in cs]
    flat_b = [c for cs in candidates for c in cs]
    scores = scorer.scores(flat_a, flat_b) if flat_a else np.zeros(0)
    out, start = [], 0
    for cs in candidates:
        part = scores[start : start + len(cs)]
        out.append([cs[i] for i in np.argsort(-part, kind="stable")])
        start += len(cs)
    return out
