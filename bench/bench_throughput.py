"""Torch encode throughput knobs side by side: batch size, threads, worker processes, bf16, length order.

Run: ``.venv/bin/python bench/bench_throughput.py [--texts 128] [--rounds 3]``. Same IKEA descriptions
(EN and DE) for every configuration, one process; within a round each group's configurations run one
after another, in alternating order from round to round, and the best of the rounds is kept, so load
from other processes hits all of a group alike. Only ratios within a group are meant to be compared.

Groups: batch size (fp32 and bf16); torch threads 1 vs 2, alone and next to a busy process; a pool of
N processes x 1 thread vs one process; bf16 vs fp32; and fixed-size chunks encoded in length-sorted vs
shuffled order (one ``encode`` call sorts its texts by length; this shows what that sorting is worth).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import append_results
from bench_backends import ikea_pairs

from polyglot_catalog.encoding import Encoder

Config = tuple[str, Callable[[], object]]


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@contextmanager
def busy_neighbour() -> Iterator[None]:
    """One process spinning on a CPU, as another task on the same worker would."""
    proc = mp.get_context("spawn").Process(target=_spin, args=(3600.0,), daemon=True)
    proc.start()
    try:
        yield
    finally:
        proc.terminate()
        proc.join()


def run_groups(
    groups: dict[str, list[Config]], rounds: int, contended: set[str]
) -> dict[str, dict[str, float]]:
    """Best seconds per configuration; configurations alternate their order within each round."""
    best: dict[str, dict[str, float]] = {
        g: {name: float("inf") for name, _ in cfgs} for g, cfgs in groups.items()
    }
    for round_no in range(rounds):
        for group, configs in groups.items():
            order = configs if round_no % 2 == 0 else list(reversed(configs))
            with busy_neighbour() if group in contended else _nothing():
                if group in contended:
                    time.sleep(0.5)  # let the neighbour get going
                for name, fn in order:
                    start = time.perf_counter()
                    fn()
                    best[group][name] = min(best[group][name], time.perf_counter() - start)
            print(
                f"round {round_no + 1} {group}: " + ", ".join(f"{n} {s:.1f}s" for n, s in best[group].items())
            )
    return best


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def with_threads(threads: int, fn: Callable[[], object]) -> Callable[[], object]:
    """torch threads are process-wide: set them right before each timed call."""

    def run() -> object:
        torch.set_num_threads(threads)
        return fn()

    return run


def chunked(encoder: Encoder, texts: list[str], size: int) -> Callable[[], object]:
    """One ``encode`` call per fixed-size chunk, in the given order (no sorting across chunks)."""

    def run() -> object:
        return [encoder.encode(texts[i : i + size]) for i in range(0, len(texts), size)]

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--texts", type=int, default=128, help="IKEA descriptions encoded per configuration")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (best of)")
    parser.add_argument("--batch-sizes", default="8,16,32,64,128")
    parser.add_argument("--processes", type=int, default=2, help="pool size compared with one process")
    parser.add_argument("--groups", help="comma-separated group names to run (default: all)")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args()

    en, de = ikea_pairs(args.texts)
    texts = [t for pair in zip(en, de, strict=True) for t in pair][: args.texts]
    cores = len(os.sched_getaffinity(0))
    default_threads = torch.get_num_threads()
    sizes = [int(x) for x in args.batch_sizes.split(",")]

    fp32 = Encoder(precision="fp32")
    bf16 = Encoder(precision="bf16")
    pool = Encoder(processes=args.processes, threads=1, precision="fp32")

    def enc(encoder: Encoder, batch: int, threads: int = default_threads) -> Callable[[], object]:
        def run() -> object:
            encoder.batch_size = batch
            return encoder.encode(texts)

        return with_threads(threads, run)

    by_len = sorted(texts, key=len, reverse=True)
    shuffled = random.Random(0).sample(texts, len(texts))
    groups: dict[str, list[Config]] = {
        "batch fp32": [(f"batch {b}", enc(fp32, b)) for b in sizes],
        "batch bf16": [(f"batch {b}", enc(bf16, b)) for b in sizes],
        "threads": [(f"{t} thread(s)", enc(fp32, 32, t)) for t in sorted({1, cores})],
        "threads, busy neighbour": [(f"{t} thread(s)", enc(fp32, 32, t)) for t in sorted({1, cores})],
        "processes": [
            ("1 process", enc(fp32, 32)),
            (f"pool {args.processes} x 1 thread", enc(pool, 32)),
        ],
        "precision": [("fp32", enc(fp32, 32)), ("bf16", enc(bf16, 32))],
        "chunk order": [
            ("32-text chunks, length-sorted", with_threads(default_threads, chunked(fp32, by_len, 32))),
            ("32-text chunks, shuffled", with_threads(default_threads, chunked(fp32, shuffled, 32))),
        ],
    }
    if args.groups:
        wanted = {g.strip() for g in args.groups.split(",")}
        unknown = wanted - set(groups)
        if unknown:
            parser.error(f"unknown groups {sorted(unknown)}; choose from {list(groups)}")
        groups = {g: configs for g, configs in groups.items() if g in wanted}
    for encoder in (fp32, bf16, pool):  # warm-up: first-call allocations, thread pools, workers
        encoder.batch_size = 32
        encoder.encode(texts[:16])
    try:
        best = run_groups(groups, args.rounds, contended={"threads, busy neighbour"})
    finally:
        pool.close()
    torch.set_num_threads(default_threads)

    mean_chars = sum(map(len, texts)) / len(texts)
    lines = [
        f"{len(texts)} IKEA descriptions (EN and DE alternating, mean {mean_chars:.0f} "
        f"characters), bundled e5-small, torch backend; best of {args.rounds} rounds, configurations of a "
        f"group interleaved. Defaults unless the row says otherwise: fp32, batch 32, {default_threads} torch "
        f"threads ({cores} CPUs). Ratio: speed vs the group's first row.",
        "",
        "| group | configuration | texts/s | speed vs first row |",
        "| --- | --- | --- | --- |",
    ]
    for group, seconds in best.items():
        first = next(iter(seconds.values()))
        for name, secs in seconds.items():
            lines.append(f"| {group} | {name} | {len(texts) / secs:.1f} | {first / secs:.2f}x |")
    body = "\n".join(lines)
    if args.no_append:
        print(body)
    else:
        command = "python bench/bench_throughput.py" + (f" --groups '{args.groups}'" if args.groups else "")
        if args.rounds != 3 or args.texts != 128:
            command += f" --rounds {args.rounds} --texts {args.texts}"
        append_results("Encode throughput: batch, threads, processes, bf16, length order", command, body)


if __name__ == "__main__":
    main()
