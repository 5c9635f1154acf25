"""A throwaway CeleryExecutor deployment on loopback: PostgreSQL, Redis, Airflow, one Celery worker.

Why: the deployment users run (docker-compose.yml) is Postgres + Redis + CeleryExecutor, while every
other test runs on SQLite in one process. This starts the same services from the Debian packages,
each as its own process group with its log under the deployment folder, so a test can drive DAGs
through the REST API, SIGKILL the worker, and stop everything again. A service that dies or hangs
fails with the tail of its log instead of blocking CI. See docs/DEPLOYMENT.md.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
USER = "admin"
DB = "airflow"
#: Task slots of each Celery worker (``--concurrency``), as docker-compose.yml's worker has.
WORKER_SLOTS = 2
# Short failure detection, so a killed worker's task is failed and retried within seconds.
HEARTBEAT_TIMEOUT_S = 20
RETRY_DELAY_S = 2
TERMINAL = {"success", "failed"}

# Cluster policy (airflow_local_settings.py in $AIRFLOW_HOME/config): the DAGs retry after one minute;
# the test retries after RETRY_DELAY_S seconds without editing them.
LOCAL_SETTINGS = f'''\
from datetime import timedelta


def task_policy(task):
    """Test deployment only: retry soon after a killed worker."""
    if task.retries:
        task.retry_delay = timedelta(seconds={RETRY_DELAY_S})
'''


class DeploymentError(RuntimeError):
    """A service died or did not become ready; the message carries the tails of the logs."""


def missing_requirements() -> str | None:
    """Why the deployment cannot start here (binaries or Python packages missing), or None."""
    if not postgres_bindir():
        return "PostgreSQL server binaries not found (apt-get install postgresql)"
    if not shutil.which("redis-server"):
        return "redis-server not found (apt-get install redis-server)"
    for module, package in (
        ("airflow.providers.celery", "apache-airflow-providers-celery"),
        ("psycopg2", "psycopg2-binary"),
    ):
        try:
            __import__(module)
        except ImportError:
            return f"{package} is not installed (pip install -r requirements.txt)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, but there is no 'postgres' OS user to run PostgreSQL as"
    return None


def postgres_bindir() -> Path | None:
    """Folder with initdb and postgres: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    stop_signal: int = signal.SIGTERM
    killed: bool = False  # by the test on purpose: its exit is no failure


class Deployment:
    """Postgres, Redis and Airflow (CeleryExecutor) on 127.0.0.1 and free ports, in a temp folder.

    Use as a context manager: on exit every process group is stopped (SIGTERM, then SIGKILL) and the
    folder removed. Airflow reads the project's dags/ and plugins/; data and reports go to
    ``self.data_dir``; Qdrant is the embedded store there (no ``qdrant_default`` connection).
    """

    def __init__(self, startup_timeout: float = 240.0) -> None:
        self.startup_timeout = startup_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="polyglot-deploy-"))
        self.dir.chmod(0o755)  # the postgres OS user must reach its data folder inside
        self.logs = self.dir / "logs"
        self.logs.mkdir()
        self.data_dir = self.dir / "data"
        self.home = self.dir / "airflow_home"
        self.pg_port, self.redis_port, self.api_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"
        self.services: dict[str, Service] = {}
        self.workers = 0
        self._token: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.start_postgres()
        self.start_redis()
        self.migrate()
        for component in ("scheduler", "dag-processor", "api-server"):
            self.start_airflow(component)
        self.start_worker()
        self.wait_for("the api-server", lambda: self.api("/api/v2/monitor/health"), self.startup_timeout)

    def stop(self) -> None:
        """Stop Airflow first, then Redis and Postgres; every process group, SIGKILL if it lingers."""
        for service in reversed(list(self.services.values())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.proc.pid, service.stop_signal)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):  # children left behind by the leader
                os.killpg(service.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                service.proc.wait(timeout=10)
        self.services.clear()
        if os.environ.get("POLYGLOT_KEEP_DEPLOYMENT"):  # to read the logs after a failure
            print(f"deployment folder kept: {self.dir}", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None, **kwargs: Any) -> Service:
        log = self.logs / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )
        service = Service(name, proc, log)
        self.services[name] = service
        return service

    def failure(self, what: str) -> DeploymentError:
        tails = "\n".join(
            f"--- {s.name} (exit {s.proc.poll()}) {s.log}:\n{log_tail(s.log)}" for s in self.services.values()
        )
        return DeploymentError(f"{what}\n{tails}")

    def wait_for(self, what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
        """Poll ``probe()`` until truthy; fail at once when a service exits, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for service in self.services.values():
                if not service.killed and service.proc.poll() is not None:
                    raise self.failure(f"{service.name} exited with {service.proc.returncode} ({what})")
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                value = probe()
                if value:
                    return value
            if time.monotonic() > deadline:
                raise self.failure(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

    # -- services -------------------------------------------------------------------------------

    def start_postgres(self) -> None:
        """A fresh initdb cluster, loopback only, run as the ``postgres`` OS user when we are root."""
        bindir = postgres_bindir()
        assert bindir is not None
        pgdata, sockets = self.dir / "pgdata", self.dir / "pgsock"
        sockets.mkdir()
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:  # postgres refuses to run as root
            entry = pwd.getpwnam("postgres")
            os.chown(sockets, entry.pw_uid, entry.pw_gid)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            pgdata.mkdir(mode=0o700)
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
        env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C.UTF-8", "HOME": str(self.dir)}
        with open(self.logs / "initdb.log", "wb") as out:
            done = subprocess.run(
                [str(bindir / "initdb"), "-D", str(pgdata), "-U", DB, "--auth=trust", "-E", "UTF8"],
                stdout=out, stderr=subprocess.STDOUT, env=env, timeout=120, **as_user,
            )  # fmt: skip
        if done.returncode:
            raise DeploymentError(f"initdb failed:\n{log_tail(self.logs / 'initdb.log')}")
        # Throwaway data: no fsync, so the migration and the runs do not wait on the disk.
        cmd = [
            str(bindir / "postgres"), "-D", str(pgdata), "-k", str(sockets),
            "-h", "127.0.0.1", "-p", str(self.pg_port),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            "-c", "max_connections=200",
        ]  # fmt: skip
        service = self._spawn("postgres", cmd, env=env, **as_user)
        service.stop_signal = signal.SIGINT  # fast shutdown

        import psycopg2

        def create_db() -> bool:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=self.pg_port, user=DB, dbname="postgres")
            except psycopg2.OperationalError:
                return False
            conn.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            try:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE DATABASE {DB}")
            finally:
                conn.close()
            return True

        self.wait_for("PostgreSQL to accept connections", create_db, 60, interval=0.5)

    def start_redis(self) -> None:
        cmd = [
            "redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir),
        ]  # fmt: skip
        self._spawn("redis", cmd)

        def ping() -> bool:
            with socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")

        self.wait_for("Redis to answer PING", ping, 30, interval=0.3)

    @property
    def sql_alchemy_conn(self) -> str:
        return f"postgresql+psycopg2://{DB}:{DB}@127.0.0.1:{self.pg_port}/{DB}"

    def environment(self) -> dict[str, str]:
        """The Airflow settings; the names match docker-compose.yml's x-airflow-common environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST_"))}
        env.update(
            AIRFLOW_HOME=str(self.home),
            AIRFLOW__CORE__EXECUTOR="CeleryExecutor",
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=self.sql_alchemy_conn,
            AIRFLOW__CELERY__BROKER_URL=f"redis://127.0.0.1:{self.redis_port}/0",
            AIRFLOW__CELERY__RESULT_BACKEND=f"db+postgresql://{DB}:{DB}@127.0.0.1:{self.pg_port}/{DB}",
            AIRFLOW__CORE__AUTH_MANAGER=(
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{USER}:admin",
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.api_port),
            AIRFLOW__API__BASE_URL=self.base,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET=self._jwt_secret(),
            AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
            AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            # A killed worker's running task is failed (and retried) after this many silent seconds.
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT_S),
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL="2",
            AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL="3",
            POLYGLOT_DATA_DIR=str(self.data_dir),
            POLYGLOT_CACHE_DIR=os.environ.get("POLYGLOT_CACHE_DIR") or str(ROOT / ".cache"),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            # Torch threads: all CPUs. On the embedded store (this test) the worker's embed tasks take
            # its lock in turn, so one encodes at a time and CPUs / slots would idle half of them; with
            # a Qdrant server they run side by side and compose sets slots x threads = cores.
            OMP_NUM_THREADS=str(len(os.sched_getaffinity(0))),
            PYTHONPATH=str(ROOT / "plugins"),
        )
        env.pop("AIRFLOW_CONN_QDRANT_DEFAULT", None)
        return env

    def _jwt_secret(self) -> str:
        if not hasattr(self, "_secret"):
            self._secret = secrets.token_hex(32)  # one for every component, or task tokens won't verify
        return self._secret

    def airflow(self) -> str:
        return str(Path(sys.executable).with_name("airflow"))

    def migrate(self) -> None:
        (self.home / "config").mkdir(parents=True)
        (self.home / "config" / "airflow_local_settings.py").write_text(LOCAL_SETTINGS, encoding="utf-8")
        with open(self.logs / "db-migrate.log", "wb") as out:
            try:
                done = subprocess.run(
                    [self.airflow(), "db", "migrate"], env=self.environment(), stdout=out,
                    stderr=subprocess.STDOUT, timeout=240,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise self.failure(
                    f"airflow db migrate hung:\n{log_tail(self.logs / 'db-migrate.log')}"
                ) from None
        if done.returncode:
            raise self.failure(f"airflow db migrate failed:\n{log_tail(self.logs / 'db-migrate.log')}")

    def start_airflow(self, component: str) -> Service:
        cmd = [self.airflow(), component]
        if component == "api-server":
            cmd += ["--host", "127.0.0.1", "--port", str(self.api_port)]
        return self._spawn(component, cmd, env=self.environment())

    def start_worker(self) -> Service:
        """One more Celery worker with 2 slots (``worker-<n>``); no log server, so no port is opened."""
        self.workers += 1
        name = f"worker-{self.workers}"
        cmd = [
            self.airflow(), "celery", "worker", "--concurrency", str(WORKER_SLOTS), "--skip-serve-logs",
        ]  # fmt: skip
        return self._spawn(name, cmd, env=self.environment())

    def kill(self, name: str) -> None:
        """SIGKILL a service's whole process group (worker, its pool and task processes) at once."""
        service = self.services.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.proc.pid, signal.SIGKILL)
        service.proc.wait(timeout=30)
        service.killed = True
        self.services[f"{name} (killed)"] = service  # keeps its log in failure messages

    # -- REST API -------------------------------------------------------------------------------

    def api(self, path: str, *, method: str | None = None, body: Any = None, auth: bool = True) -> Any:
        headers = {"content-type": "application/json"}
        if auth:
            headers["authorization"] = f"Bearer {self.token()}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, headers=headers, method=method or ("POST" if data else "GET")
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def token(self) -> str:
        """A JWT from /auth/token with the password the simple auth manager generated."""
        if self._token is None:
            path = self.home / "simple_auth_manager_passwords.json.generated"
            password = json.loads(path.read_text(encoding="utf-8"))[USER]
            body = {"username": USER, "password": password}
            self._token = self.api("/auth/token", body=body, auth=False)["access_token"]
        return self._token

    def wait_parsed(self, dag_ids: tuple[str, ...], timeout: float = 180) -> None:
        for dag_id in dag_ids:
            self.wait_for(
                f"DAG {dag_id} to be parsed", lambda d=dag_id: self.api(f"/api/v2/dags/{d}"), timeout
            )

    def unpause(self, dag_id: str) -> None:
        self.api(f"/api/v2/dags/{dag_id}", method="PATCH", body={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.api(f"/api/v2/dags/{dag_id}/dagRuns", body={"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.api(f"/api/v2/dags/{dag_id}/dagRuns?order_by=start_date")["dag_runs"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run = self.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            return run if run["state"] in TERMINAL else None

        return self.wait_for(f"{dag_id} run {run_id} to finish", done, timeout)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")["task_instances"]

    @staticmethod
    def map_indexes(tis: list[dict[str, Any]], task_id: str) -> list[int]:
        """Map indexes of ``task_id``'s instances: ``[0, 1, 2]`` for three mapped tasks, ``[-1]`` unmapped."""
        return sorted(ti["map_index"] for ti in tis if ti["task_id"] == task_id)

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """The text of one try's task log (the worker writes it under $AIRFLOW_HOME/logs); "" until then."""
        folder = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        return "".join(
            p.read_text(encoding="utf-8", errors="replace")
            for p in folder.glob(f"**/attempt={try_number}.log")
        )

    def tries(self, dag_id: str, run_id: str, task_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        return self.api(path)["task_instances"]
