"""Contrastive fine-tuning of the encoder with sentence-transformers' own trainer.

Why this shape: in-batch negatives (MultipleNegativesRankingLoss) turn every other product in a
batch into a negative for free, and one hard negative per pair, mined from the matcher's own
candidates (the nearest wrong product of the other region), teaches exactly the sibling-variant
confusions the matcher makes. Only products of the training split are ever mined or trained on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from polyglot_catalog.matching.candidates import exact_topk

log = logging.getLogger(__name__)

LOSSES = ("mnrl", "cached-mnrl")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TuneConfig:
    """Training knobs; the defaults are sized for a 2-core CPU run of a few minutes.

    ``max_steps`` and ``max_minutes`` are budgets: training stops at whichever comes first (and
    earlier when the validation top-1 stops improving for ``patience`` evaluations).
    """

    max_steps: int = 300
    max_minutes: float | None = 10.0
    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 2e-5  # 5e-5 x 320 steps cost Tatoeba spa->en 0.028 (bench/RESULTS.md)
    warmup_ratio: float = 0.1
    eval_steps: int = 25
    patience: int = 3
    val_fraction: float = 0.15
    max_seq_length: int = 128
    hard_negatives: bool = True
    freeze_embeddings: bool = True
    loss: str = "mnrl"
    mini_batch_size: int = 16
    precision: str | None = None
    device: str | None = None
    seed: int = 0
    val_distractors: int = 1500

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}; got {self.loss!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}; got {self.precision!r}")
        for name in ("max_steps", "batch_size", "eval_steps", "max_seq_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0; got {self.max_minutes}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainOutcome:
    """What a training run did: steps, time, best validation figure, loss history."""

    steps: int
    seconds: float
    stopped_by: str
    val_before: dict[str, float]
    val_after: dict[str, float]
    device: str
    precision: str
    history: list[dict[str, float]] = field(default_factory=list)


def encode(model: Any, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """Unit vectors with the model's default prompt (how the embed stage calls it)."""
    vectors = model.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype=np.float32)


def default_prompt(model: Any) -> str:
    name = getattr(model, "default_prompt_name", None)
    return model.prompts.get(name, "") if name else ""


def mine_hard_negatives(model: Any, pairs: pd.DataFrame, pool: pd.DataFrame, k: int = 10) -> list[str | None]:
    """Per pair (anchor ``text_a``), the nearest candidate of ``region_b`` from another product.

    ``pool`` (``region, text, component``) holds the only texts a negative may come from: the
    training split's. A candidate with the positive's or the anchor's exact text is skipped (the
    catalog repeats generic texts across products; they are not negatives).
    """
    out: list[str | None] = [None] * len(pairs)
    if pairs.empty:
        return out
    distinct = sorted(set(pool["text"]) | set(pairs["text_a"]))
    vectors = dict(zip(distinct, encode(model, distinct), strict=True))
    for region, sub in pairs.groupby("region_b", sort=True):
        cand = pool[pool["region"] == region].reset_index(drop=True)
        if cand.empty:
            continue
        corpus = np.stack([vectors[t] for t in cand["text"]])
        queries = np.stack([vectors[t] for t in sub["text_a"]])
        idx, _ = exact_topk(queries, corpus, min(k, len(cand)))
        texts, comps = cand["text"].to_numpy(), cand["component"].to_numpy()
        for row, (pos, comp, anchor, positive) in enumerate(
            zip(sub.index, sub["component"], sub["text_a"], sub["text_b"], strict=True)
        ):
            for j in idx[row]:
                if comps[j] != comp and texts[j] not in (positive, anchor):
                    out[pairs.index.get_loc(pos)] = str(texts[j])
                    break
    return out


def _evaluator_class() -> type:
    from sentence_transformers.evaluation import SentenceEvaluator

    class CrossRegionTop1(SentenceEvaluator):
        """Top-1 of each validation product's twin among a region's texts (both directions).

        An identical-text hit counts as correct (the catalog shares generic texts across products,
        and no text-based model can separate them).
        """

        def __init__(self, pairs: pd.DataFrame, corpus: dict[str, list[str]], name: str = "val") -> None:
            super().__init__()
            self.pairs, self.corpus, self.name = pairs, corpus, name
            self.primary_metric = "top1"

        def __call__(self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1):
            distinct = sorted({t for ts in self.corpus.values() for t in ts})
            vec = dict(zip(distinct, encode(model, distinct), strict=True))
            hits: list[bool] = []
            for qa, qb, rb in (("text_a", "text_b", "region_b"), ("text_b", "text_a", "region_a")):
                for region, sub in self.pairs.groupby(rb):
                    texts = np.array(self.corpus[region], dtype=object)
                    corpus = np.stack([vec[t] for t in texts])
                    best, _ = exact_topk(np.stack([vec[t] for t in sub[qa]]), corpus, 1)
                    hits.extend(texts[best[:, 0]] == sub[qb].to_numpy())
            metrics = {"top1": float(np.mean(hits)) if hits else 0.0}
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return CrossRegionTop1


def validation_evaluator(val_pairs: pd.DataFrame, pool: pd.DataFrame, distractors: int, seed: int = 0) -> Any:
    """The validation metric: validation pairs ranked among their region's texts.

    Each region's corpus is every validation text plus up to ``distractors`` other texts of that
    region, so the figure reflects a realistic pool without re-encoding the whole catalog at every
    evaluation.
    """
    rng = np.random.default_rng(seed)
    corpus: dict[str, list[str]] = {}
    for region in sorted(set(val_pairs["region_a"]) | set(val_pairs["region_b"])):
        own = set(val_pairs.loc[val_pairs["region_a"] == region, "text_a"])
        own |= set(val_pairs.loc[val_pairs["region_b"] == region, "text_b"])
        others = sorted(set(pool.loc[pool["region"] == region, "text"]) - own)
        if len(others) > distractors:
            others = list(rng.choice(np.array(others, dtype=object), distractors, replace=False))
        corpus[region] = sorted(own) + others
    return _evaluator_class()(val_pairs, corpus)


def _resolve_device(config: TuneConfig | Any) -> tuple[str, str]:
    """``(device, precision)`` of a training config (the encoder's or the re-ranker's): CUDA when
    present, bf16 on CUDA where supported (else fp16), fp32 on CPU; fp16 on CPU is refused."""
    import torch

    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if config.precision:
        precision = config.precision
    elif device.startswith("cuda"):
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        precision = "fp32"
    if precision == "fp16" and not device.startswith("cuda"):
        raise ValueError("precision 'fp16' needs a CUDA device; use bf16 or fp32 on CPU")
    return device, precision


def _callbacks(config: TuneConfig, total_steps: int, history: list[dict[str, float]]) -> list[Any]:
    from transformers import EarlyStoppingCallback, TrainerCallback

    class Progress(TrainerCallback):
        """Steps, loss and ETA in the log (the task log under Airflow); stops at the time budget."""

        def __init__(self) -> None:
            self.start = time.monotonic()
            self.stopped_by_time = False

        def on_step_end(self, args, state, control, **kwargs):
            budget = config.max_minutes
            if budget is not None and time.monotonic() - self.start > budget * 60:
                self.stopped_by_time = True
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            elapsed = time.monotonic() - self.start
            step = max(state.global_step, 1)
            eta = elapsed / step * (total_steps - state.global_step)
            if config.max_minutes is not None:
                eta = min(eta, max(0.0, config.max_minutes * 60 - elapsed))
            if "loss" in logs:
                history.append({"step": state.global_step, "loss": float(logs["loss"])})
                log.info(
                    "tune step %d/%d loss %.4f elapsed %.0fs ETA %.0fs",
                    state.global_step,
                    total_steps,
                    logs["loss"],
                    elapsed,
                    eta,
                )
            for key, value in logs.items():
                if key.endswith("_top1"):
                    history.append({"step": state.global_step, "val_top1": float(value)})
                    log.info("tune step %d/%d validation top-1 %.4f", state.global_step, total_steps, value)

    return [Progress(), EarlyStoppingCallback(early_stopping_patience=config.patience)]


def _freeze_word_embeddings(model: Any) -> int:
    """Freeze the token embedding matrix: most of a multilingual model's weights, shared by every
    language; leaving it alone keeps languages the catalog lacks where they were and makes a CPU
    step several times cheaper (no update of a 250k x d matrix). Returns the frozen parameters."""
    import torch

    frozen = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings > 10_000:
            for p in module.parameters():
                p.requires_grad_(False)
                frozen += p.numel()
    return frozen


def train(
    model: Any,
    train_pairs: pd.DataFrame,
    val_pairs: pd.DataFrame,
    pool: pd.DataFrame,
    config: TuneConfig,
    work_dir: Path,
) -> TrainOutcome:
    """Fine-tune ``model`` in place on ``train_pairs``; pick the best checkpoint on ``val_pairs``.

    ``pool`` (``region, text, component``) is the training split's texts: the only source of hard
    negatives and the validation distractors. Returns what happened; the model holds the best
    weights (by validation top-1) when it returns.
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    if train_pairs.empty:
        raise ValueError("no training pairs: the labels, reviewed decisions and GTINs link no products")
    device, precision = _resolve_device(config)
    model.to(device)
    full_length = model.max_seq_length
    model.max_seq_length = min(config.max_seq_length, full_length or config.max_seq_length)
    frozen = _freeze_word_embeddings(model) if config.freeze_embeddings else 0
    rng = np.random.default_rng(config.seed)
    flip = rng.random(len(train_pairs)) < 0.5  # either side may be the anchor: matching is symmetric
    oriented = train_pairs.copy()
    for x, y in (("region_a", "region_b"), ("text_a", "text_b")):
        oriented.loc[flip, [x, y]] = oriented.loc[flip, [y, x]].to_numpy()
    columns = {"anchor": oriented["text_a"].tolist(), "positive": oriented["text_b"].tolist()}
    if config.hard_negatives:
        t0 = time.monotonic()
        negatives = mine_hard_negatives(model, oriented, pool)
        keep = [n is not None for n in negatives]
        columns = {k: [v for v, ok in zip(vs, keep, strict=True) if ok] for k, vs in columns.items()}
        columns["negative"] = [n for n in negatives if n is not None]
        log.info("tune: mined %d hard negatives in %.0fs", len(columns["negative"]), time.monotonic() - t0)
    dataset = Dataset.from_dict(columns)
    steps_per_epoch = max(1, len(dataset) // config.batch_size)
    total = max(1, min(config.max_steps, int(config.epochs * steps_per_epoch)))
    eval_steps = min(config.eval_steps, total)
    evaluator = (
        validation_evaluator(val_pairs, pool, config.val_distractors, config.seed) if len(val_pairs) else None
    )
    val_before = evaluator(model) if evaluator else {}
    if evaluator:
        log.info("tune: validation top-1 before training %.4f", val_before.get("val_top1", 0.0))
    if config.loss == "cached-mnrl":
        loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=config.mini_batch_size)
    else:
        loss = MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        max_steps=total,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_steps=int(config.warmup_ratio * total),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=device == "cpu",
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        prompts=default_prompt(model) or None,
        eval_strategy="steps" if evaluator else "no",
        eval_steps=eval_steps,
        save_strategy="steps" if evaluator else "no",
        save_steps=eval_steps,
        save_total_limit=2,
        save_only_model=True,
        load_best_model_at_end=bool(evaluator),
        metric_for_best_model="eval_val_top1" if evaluator else None,
        greater_is_better=True,
        logging_steps=max(1, min(10, eval_steps)),
        report_to="none",
        seed=config.seed,
        dataloader_drop_last=True,
        disable_tqdm=True,
    )
    history: list[dict[str, float]] = []
    callbacks = _callbacks(config, total, history)
    if not evaluator:
        callbacks = callbacks[:1]
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=loss, evaluator=evaluator, callbacks=callbacks
    )
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints raw dicts on stdout; Progress logs instead
    log.info(
        "tune: %d pairs, %d steps of %d on %s (%s), %d frozen embedding weights",
        len(dataset),
        total,
        config.batch_size,
        device,
        precision,
        frozen,
    )
    t0 = time.monotonic()
    state = trainer.train()
    seconds = time.monotonic() - t0
    for p in model.parameters():
        p.requires_grad_(True)
    model.max_seq_length = full_length
    steps = int(state.global_step)
    if callbacks[0].stopped_by_time:
        stopped_by = "time budget"
    elif steps < total:
        stopped_by = "early stopping"
    else:
        stopped_by = "step budget"
    val_after = evaluator(model) if evaluator else {}
    if evaluator:
        log.info(
            "tune: validation top-1 after training %.4f (%s)", val_after.get("val_top1", 0.0), stopped_by
        )
    return TrainOutcome(steps, seconds, stopped_by, val_before, val_after, device, precision, history)
