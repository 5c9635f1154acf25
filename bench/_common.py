"""Shared bits of the benchmarks: where the data is, machine description, appending results."""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("POLYGLOT_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "bench" / "RESULTS.md"


def machine() -> str:
    """One line naming the machine, so figures from different hosts are never compared blindly."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}"
    )


def append_results(title: str, command: str, body: str) -> None:
    """Append one dated block to bench/RESULTS.md (never rewrites earlier blocks)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    block = f"\n## {title} ({stamp})\n\nMachine: {machine()}\n\nCommand: `{command}`\n\n{body.strip()}\n"
    if not RESULTS.exists():
        RESULTS.write_text("# Benchmark results\n\nEach block is appended by the script named in it.\n")
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write(block)
    print(block)


def publish(title: str, script: str, argv: list[str] | None, body: str, append: bool = True) -> None:
    """Print a benchmark's block and, unless ``append`` is False, append it with the command line
    that produced it (``script`` plus ``argv`` as given)."""
    print(body)
    if append:
        append_results(title, f"python bench/{script}" + (" " + " ".join(argv) if argv else ""), body)
