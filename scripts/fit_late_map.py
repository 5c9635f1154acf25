"""Fit the late map of a model (polyglot_catalog.late_map) and write it beside the package.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/fit_late_map.py [--tatoeba DIR] [--products GLOB] [--model M]

Texts: Tatoeba's sentences (the LASER test sets in ../shared/data/tatoeba: cmn, deu, fra, jpn, spa and
their English sides, CC BY 2.0 FR) grouped into pseudo-descriptions of a few sentences of one
language, and the product descriptions the repository ships (include/demo_catalog, 950 IKEA texts in
en/de/fr: the domain the map serves). Each text gets one forward pass (the late rows of its
sentences) and each distinct sentence one pass of its own (the targets). No match label is used.
Prints the fit's figures and the file written; the file is named by the model's fingerprint, so it
only ever applies to the exact model files it was fitted on.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

from polyglot_catalog.encoding import LATE_RECIPE, Encoder, _unit  # noqa: E402
from polyglot_catalog.late_map import RIDGE, LateMap, fit_late_map, map_path, pseudo_descriptions  # noqa: E402
from polyglot_catalog.sentences import split_sentences  # noqa: E402

DEFAULT_TATOEBA = Path(os.environ.get("POLYGLOT_SHARED_DATA", ROOT.parent / "shared" / "data")) / "tatoeba"


def read_tatoeba(folder: Path) -> dict[str, list[str]]:
    """``language -> distinct sentences`` from ``tatoeba.xxx-eng.{xxx,eng}`` files (English once)."""
    lines: dict[str, dict[str, None]] = defaultdict(dict)
    files = sorted(folder.glob("tatoeba.*-eng.*"))
    if not files:
        raise SystemExit(f"no tatoeba.xxx-eng.* files in {folder}")
    for path in files:
        language = path.suffix.lstrip(".")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                lines[language][line.strip()] = None
    return {language: list(found) for language, found in lines.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tatoeba", type=Path, default=DEFAULT_TATOEBA)
    ap.add_argument("--products", default=str(ROOT / "include" / "demo_catalog" / "*.parquet"))
    ap.add_argument("--model", default=None, help="registry name or folder (default: the bundled model)")
    ap.add_argument("--ridge", type=float, default=RIDGE)
    ap.add_argument("--out", type=Path, help="default: late_maps/<fingerprint>.npz in the package")
    args = ap.parse_args(argv)

    enc = Encoder(args.model, precision="fp32")  # the map is fitted in fp32 whatever runs it later
    if not enc.late_chunking:
        raise SystemExit(f"{enc.model_name} does not pool by mean: it makes no late rows to map")
    lines = read_tatoeba(args.tatoeba)
    products: list[str] = []
    for path in sorted(glob.glob(args.products)):
        table = pq.read_table(path)
        if "description" in table.schema.names:  # the folder also holds labels.parquet
            products += [t for t in table.column("description").to_pylist() if t and t.strip()]
    texts = pseudo_descriptions(lines) + products
    sentences = [split_sentences(t) for t in texts]
    t0 = time.perf_counter()
    _, rows, own = enc.late_rows(texts, sentences)
    keep = ~np.concatenate(own)  # rows that are already a sentence's own vector teach nothing
    flat = [s for group in sentences for s in group]
    distinct = sorted(set(flat))
    alone = dict(zip(distinct, enc.encode(distinct), strict=True))
    x = np.concatenate(rows)[keep]
    y = np.stack([alone[s] for s in flat])[keep]
    seconds = time.perf_counter() - t0
    fitted = fit_late_map(
        x,
        y,
        args.ridge,
        model=enc.model_name,
        fingerprint=enc.fingerprint,
        recipe=LATE_RECIPE,
        source="Tatoeba, LASER v1 test sets (CC BY 2.0 FR): "
        + ", ".join(sorted(lines))
        + f"; {len(products)} product descriptions ({os.path.relpath(args.products, ROOT)})",
        texts=len(texts),
        sentences=int(keep.sum()),
    )
    before = float(np.mean(np.sum(_unit(x) * y, axis=1)))
    after = float(np.mean(np.sum(_unit(fitted.apply(x)) * y, axis=1)))
    meta = {**fitted.meta, "cosine_before": round(before, 4), "cosine_after": round(after, 4)}
    fitted = LateMap(fitted.weights, fitted.bias, meta)
    out = fitted.save(args.out or map_path(enc.fingerprint))
    print(json.dumps({**meta, "digest": fitted.digest, "seconds": round(seconds, 1), "file": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
