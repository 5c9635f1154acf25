"""End to end: ``make airflow`` starts the four components on loopback with the DAGs unpaused.

The DAG chain itself (catalog_embed, then cross_region_match, real model, embedded Qdrant) runs in
tests/test_e2e_incremental.py, whose night 1 is checked as a user checks a first run, and through the
REST API of a Celery deployment in tests/test_deployment_celery.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# `make airflow` (issue 21): the four components on loopback, both DAGs unpaused, no run started


def test_make_airflow_starts_on_loopback_with_both_dags_unpaused_and_no_run(tmp_path):
    import socket
    import sqlite3

    sys.path.insert(0, str(ROOT / "scripts"))
    import run_airflow

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert run_airflow.component_command("airflow", "api-server", port)[2:4] == ["--host", "127.0.0.1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "PYTEST_"))}
    env.update(AIRFLOW_HOME=str(tmp_path / "home"), POLYGLOT_DATA_DIR=str(tmp_path / "data"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_airflow.py"), "--port", str(port), "--exit-when-ready"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    password = json.loads((tmp_path / "home" / "simple_auth_manager_passwords.json.generated").read_text())
    assert f"Airflow UI: http://127.0.0.1:{port}" in done.stdout
    assert f"login: admin / {password['admin']}" in done.stdout
    with sqlite3.connect(tmp_path / "home" / "airflow.db") as db:
        paused = dict(db.execute("select dag_id, is_paused from dag").fetchall())
        runs = db.execute("select dag_id, run_id from dag_run").fetchall()
    assert paused == {"catalog_embed": 0, "cross_region_match": 0, "catalog_tune": 0}  # tune: no schedule
    assert runs == [], "unpausing must not start a run nobody asked for"
    with socket.socket() as sock:  # every component stopped again
        assert sock.connect_ex(("127.0.0.1", port)) != 0
