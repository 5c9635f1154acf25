"""Run every benchmark in turn (``make bench``); each appends its dated block to bench/RESULTS.md.

Each script measures its ratios side by side in one process; running them one after another (never
in parallel) keeps them from competing for the CPU.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "bench_model.py",
    "bench_backends.py",
    "bench_throughput.py",
    "bench_embed.py",
    "bench_store.py",
    "bench_store_layout.py",
    "bench_query_hits.py",
    "bench_matching.py",
    "bench_assign.py",
    "bench_match_scale.py",
]


def main() -> int:
    failed = []
    for name in SCRIPTS:
        if not (HERE / name).is_file():
            print(f"skip {name}: not present", flush=True)
            continue
        print(f"== {name}", flush=True)
        if subprocess.run([sys.executable, name], cwd=HERE).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
