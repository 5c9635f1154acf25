"""`make demo`: build the model, migrate a project-local Airflow, run catalog_embed then cross_region_match.

Both DAGs run for real with ``dag.test()`` (SQLite metadata, tasks in this process) against embedded
Qdrant under ``$POLYGLOT_DATA_DIR/qdrant``; then the report folder, the precision/recall/F1 against
the demo labels and the elapsed time are printed. Re-runs reuse stored vectors (only changed rows are
re-embedded); pass ``--full-refresh`` to re-encode everything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _environment() -> None:
    """Project-local defaults, set before anything imports airflow (it reads its config once)."""
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "POLYGLOT_CACHE_DIR": str(ROOT / ".cache"),
        "POLYGLOT_DATA_DIR": str(ROOT / ".data"),
        "AIRFLOW_HOME": str(ROOT / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__API__HOST": "127.0.0.1",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)


def _step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def _migrate() -> None:
    airflow = Path(sys.executable).with_name("airflow")
    command = [str(airflow)] if airflow.exists() else [sys.executable, "-m", "airflow"]
    subprocess.run([*command, "db", "migrate"], check=True, stdout=subprocess.DEVNULL)


def _run_dag(dag_id: str, conf: dict[str, Any]) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    run = bag.dags[dag_id].test(run_conf=conf)
    state = str(getattr(run, "state", "unknown"))
    if "success" not in state:
        raise SystemExit(f"{dag_id} ended in state {state!r}; see the task logs above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full-refresh", action="store_true", help="re-encode every row")
    parser.add_argument("--collection", default="catalog", help="Qdrant collection (default: catalog)")
    args = parser.parse_args(argv)

    _environment()
    started = time.perf_counter()

    _step("bundled model")
    from polyglot_catalog.models.registry import ensure_bundled_model

    print(f"model folder: {ensure_bundled_model()}")

    _step(f"airflow db migrate (AIRFLOW_HOME={os.environ['AIRFLOW_HOME']})")
    _migrate()

    demo = ROOT / "include" / "demo_catalog"
    if not (demo / "labels.parquet").exists():
        raise SystemExit(f"demo catalog missing under {demo}")

    _step("catalog_embed: Parquet -> embeddings -> Qdrant (local mode)")
    _run_dag(
        "catalog_embed",
        {"source": str(demo / "*.parquet"), "collection": args.collection, "full_refresh": args.full_refresh},
    )

    out_name = time.strftime("demo-%Y%m%d-%H%M%S")
    _step("cross_region_match: candidates -> decisions -> reports")
    _run_dag(
        "cross_region_match",
        {"collection": args.collection, "labels": str(demo / "labels.parquet"), "out_name": out_name},
    )

    report_dir = Path(os.environ["POLYGLOT_DATA_DIR"]) / "reports" / out_name
    summary = json.loads((report_dir / "summary.json").read_text(encoding="utf-8"))
    overall = (summary.get("metrics") or {}).get("overall") or {}
    elapsed = time.perf_counter() - started

    _step("result")
    print(f"report folder : {report_dir}")
    print(f"report page   : {report_dir / 'report.html'}")
    print(f"model         : {summary.get('model')}   threshold: {summary.get('threshold')}")
    for pair, counts in sorted((summary.get("counts") or {}).items()):
        print(f"  {pair:<8} {counts}")
    if overall:
        print(
            "vs demo labels: precision {precision:.3f}  recall {recall:.3f}  F1 {f1:.3f}".format(
                precision=overall.get("precision", float("nan")),
                recall=overall.get("recall", float("nan")),
                f1=overall.get("f1", float("nan")),
            )
        )
    print(f"elapsed       : {elapsed:.1f} s (model build, db migrate, both DAGs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
