"""The versioned model folder a tune run writes: weights, ``polyglot_tune.json`` and a model card.

Layout: ``<root>/<name>/v<N>/`` with N one above the highest version already there, written to a
hidden temp folder and renamed, so a half-written model never carries a version. The content hash
covers every file the model loads from (not the card or the metadata), so two folders with the
same hash encode identically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

META_FILE = "polyglot_tune.json"
CARD_FILE = "README.md"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^v(\d+)$")


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"tuned model name {name!r} must be 1-64 letters, digits, '_', '.' or '-' (no '@' or '/')"
        )
    return name


def content_hash(folder: Path) -> str:
    """sha256 over (relative path, bytes) of every model file, in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (META_FILE, CARD_FILE):
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def next_version(root: Path, name: str) -> int:
    base = root / name
    taken = [int(m.group(1)) for p in base.glob("v*") if (m := _VERSION.match(p.name)) and p.is_dir()]
    return max(taken, default=0) + 1


def read_meta(folder: str | Path) -> dict[str, Any] | None:
    """The tune metadata of a model folder, or None for any other folder."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def save_version(model: Any, root: Path, name: str, meta: dict[str, Any]) -> Path:
    """Save ``model`` as the next version of ``name`` under ``root``; returns the final folder."""
    check_name(name)
    root.mkdir(parents=True, exist_ok=True)
    (root / name).mkdir(exist_ok=True)
    for _ in range(5):  # another run may take the same number between our look and our rename
        version = next_version(root, name)
        tmp = root / name / f".v{version}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save(str(tmp))
        full = {**meta, "name": name, "version": version, "content_hash": content_hash(tmp)}
        full["model"] = f"{name}@v{version}"
        (tmp / META_FILE).write_text(json.dumps(full, indent=2, default=str) + "\n", encoding="utf-8")
        (tmp / CARD_FILE).write_text(model_card(full), encoding="utf-8")
        final = root / name / f"v{version}"
        try:
            tmp.rename(final)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        return final
    raise RuntimeError(f"could not claim a version folder for {name!r} under {root}")


def _table(rows: dict[str, Any]) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def model_card(meta: dict[str, Any]) -> str:
    """A short Markdown card: what the model is, what it was trained on, how it scored."""
    pairs = meta.get("pairs", {})
    outcome = meta.get("training", {})
    lines = [
        f"# {meta['name']} v{meta['version']}",
        "",
        (
            f"Cross-encoder re-ranker trained from `{meta.get('base_model')}`'s weights on cross-region "
            f"product pairs and hard negatives mined with `{meta.get('mined_with')}` (binary "
            "cross-entropy); it re-scores each product's top candidates (the matcher's `rerank` feature)."
            if meta.get("kind") == "reranker"
            else f"Fine-tuned by `polyglot-catalog tune` from `{meta.get('base_model')}` on cross-region "
            "product pairs (MultipleNegativesRankingLoss, in-batch and mined hard negatives). Load it with "
            f'`model="{meta["name"]}@v{meta["version"]}"` (or this folder).'
        ),
        "",
        f"Content hash (sha256 of the model files): `{meta['content_hash']}`",
        "",
        "## Training pairs by source",
        "",
        _table(pairs.get("train", {}).get("by_source", {})),
        "",
        "## Training pairs by region pair",
        "",
        _table(pairs.get("train", {}).get("by_region_pair", {})),
        "",
        f"Validation pairs (product groups never trained on): {pairs.get('validation_pairs', 0)}",
        "",
        "## Parameters",
        "",
        _table(meta.get("config", {})),
        "",
        "## Training run",
        "",
        _table({k: v for k, v in outcome.items() if k != "history"}),
        "",
        "## Validation (unseen product groups, before -> after)",
        "",
        "Cross-region top-1 of each validation product's twin among its region's texts (validation "
        "texts plus training texts as distractors). The same split picked the best checkpoint, so "
        "report end-to-end figures from a separate held-out set (bench/bench_tune.py).",
        "",
        _table(
            {
                k: f"{meta.get('val_before', {}).get(k, float('nan')):.4f} -> {v:.4f}"
                for k, v in meta.get("val_after", {}).items()
            }
        ),
        "",
    ]
    return "\n".join(lines)
