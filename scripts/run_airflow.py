"""`make airflow`: the Airflow UI on the embedded defaults, on 127.0.0.1, with both DAGs unpaused.

Starts the four Airflow 3 components (api-server, scheduler, dag-processor, triggerer) on the same
project-local defaults as ``make demo`` (SQLite under ``airflow_home/``, embedded Qdrant and reports
under ``.data/``, the bundled model under ``.cache/``), waits until the DAGs are parsed, unpauses
both through the REST API and prints the URL and the login. Unpausing starts no run: the embed
DAG's first scheduled run is the next 02:00 UTC, and the match DAG runs only on an embed's asset
event. Ctrl-C stops every component. Logs: ``airflow_home/logs/<component>.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAG_IDS = ("catalog_embed", "cross_region_match", "catalog_tune")
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
USER = "admin"


def environment(port: int) -> dict[str, str]:
    """Project-local defaults (as in ``run_demo.py``), loopback only; values already set win."""
    home = Path(os.environ.get("AIRFLOW_HOME") or ROOT / "airflow_home")
    defaults = {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "POLYGLOT_CACHE_DIR": str(ROOT / ".cache"),
        "POLYGLOT_DATA_DIR": str(ROOT / ".data"),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__AUTH_MANAGER": (
            "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # One secret for every component: each would otherwise make up its own, and the scheduler's
        # task tokens would not verify on the api-server.
        "AIRFLOW__API_AUTH__JWT_SECRET": _persistent_secret(home / ".polyglot_jwt_secret"),
    }
    env = dict(os.environ)
    for key, value in defaults.items():
        env.setdefault(key, value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "plugins"), env.get("PYTHONPATH")) if p)
    return env


def _persistent_secret(path: Path) -> str:
    """A random secret kept in ``path`` (mode 600), so restarts keep sessions valid."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secret)
    return secret


def component_command(airflow: str, component: str, port: int) -> list[str]:
    """The command line of one component; the api-server binds to loopback only."""
    if component == "api-server":
        return [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)]
    return [airflow, component]


def _request(
    base: str, path: str, *, method: str | None = None, token: str | None = None, body: Any = None
) -> Any:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, headers=headers, method=method or ("POST" if data else "GET")
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def _wait(what: str, probe: Any, procs: dict[str, subprocess.Popen[bytes]], timeout: float) -> Any:
    """Poll ``probe()`` until it returns a truthy value; fail early when a component died."""
    deadline = time.monotonic() + timeout
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit(f"airflow {name} exited with {proc.returncode} while waiting for {what}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            value = probe()
            if value:
                return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def password(env: dict[str, str]) -> str:
    """The admin password the simple auth manager generated into ``$AIRFLOW_HOME``."""
    path = Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text(encoding="utf-8"))[USER]


def unpause(base: str, token: str) -> None:
    for dag_id in DAG_IDS:
        _request(base, f"/api/v2/dags/{dag_id}", method="PATCH", token=token, body={"is_paused": False})


def _stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    for proc in procs.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("AIRFLOW_PORT", "8080")))
    parser.add_argument(
        "--exit-when-ready", action="store_true", help="stop again once the DAGs are unpaused (tests)"
    )
    args = parser.parse_args(argv)
    env = environment(args.port)
    airflow = str(Path(sys.executable).with_name("airflow"))
    base = f"http://127.0.0.1:{args.port}"
    logs = Path(env["AIRFLOW_HOME"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    print("==> bundled model and metadata database", flush=True)
    subprocess.run([sys.executable, "-m", "polyglot_catalog.cli", "build-model"], env=env, check=True)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, stdout=subprocess.DEVNULL)

    procs: dict[str, subprocess.Popen[bytes]] = {}
    # Ctrl-C (even when started in the background) and `kill` both stop every component.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        for component in COMPONENTS:
            with open(logs / f"{component}.log", "ab") as log:
                procs[component] = subprocess.Popen(
                    component_command(airflow, component, args.port),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        print(f"==> starting {', '.join(COMPONENTS)} (logs in {logs})", flush=True)
        _wait("the api-server", lambda: _request(base, "/api/v2/monitor/health"), procs, 300)
        login = password(env)
        token = _request(base, "/auth/token", body={"username": USER, "password": login})["access_token"]
        for dag_id in DAG_IDS:
            path = f"/api/v2/dags/{dag_id}"
            _wait(f"DAG {dag_id} to be parsed", lambda p=path: _request(base, p, token=token), procs, 300)
        unpause(base, token)
        print(
            f"\nAirflow UI: {base}\n  login: {USER} / {login}\n"
            "  the DAGs are unpaused; nothing runs until you trigger catalog_embed (Trigger, top right)\n"
            "  or its nightly 02:00 UTC schedule; each embed run then triggers cross_region_match.\n"
            "  Reports: Browse -> Match reports, or the match task's 'Match report' button.\n"
            "Ctrl-C stops Airflow.",
            flush=True,
        )
        if args.exit_when_ready:
            return 0
        while all(proc.poll() is None for proc in procs.values()):
            time.sleep(2)
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        print(f"airflow {', '.join(dead)} stopped; see {logs}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs)


if __name__ == "__main__":
    sys.exit(main())
