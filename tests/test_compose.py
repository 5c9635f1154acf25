"""docker-compose.yml: valid against the Compose Specification schema, and wired the way the README says.

Docker is not available in CI, so this is the check: the vendored compose-spec schema (see
tests/data/compose_spec/README.md) plus structural assertions on services, volumes and the profile.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "compose_spec" / "compose-spec.json"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
    "airflow-worker": "celery worker",
}
_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _interpolate(value, env: dict[str, str] | None = None):
    """Compose's ${VAR:-default} substitution (what `docker compose config` does) from ``env`` only."""
    env = env or {}
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m.group(1)) or m.group(2) or "", value)
    return value


def _cluster_command_env() -> dict[str, str]:
    """The VAR=value pairs of the cluster command documented at the top of docker-compose.yml."""
    header = (ROOT / "docker-compose.yml").read_text(encoding="utf-8").split("\nname:")[0]
    line = next(line for line in header.splitlines() if "--profile cluster" in line)
    return dict(re.findall(r"(\w+)=(\S+)", line))


def _connection(compose: dict, env: dict[str, str] | None = None) -> dict:
    worker_env = compose["services"]["airflow-worker"]["environment"]
    return json.loads(_interpolate(worker_env["AIRFLOW_CONN_QDRANT_DEFAULT"], env))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_compose_file_matches_the_compose_spec(compose, validator):
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_catches_mistakes(compose, validator):
    broken = json.loads(json.dumps(compose))
    broken["services"]["qdrant"]["restart_policy"] = "always"  # not a compose key
    broken["services"]["redis"]["ports"] = "6379"  # must be a list
    assert len(list(validator.iter_errors(broken))) >= 2


def test_airflow_3_celery_stack(compose):
    services = compose["services"]
    for name, command in AIRFLOW_SERVICES.items():
        assert services[name]["command"] == command, name
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://airflow-apiserver:8080/")
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    build = services["airflow-worker"]["build"]["dockerfile_inline"]
    assert "FROM apache/airflow:" in _interpolate(build)
    assert "3.3.2" in _interpolate(build)


def test_project_is_mounted_like_an_astronomer_project(compose):
    worker = compose["services"]["airflow-worker"]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in worker["volumes"]}
    for folder in ("dags", "plugins", "include"):
        assert mounts[f"/usr/local/airflow/{folder}"] == f"./{folder}"
    env = worker["environment"]
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/usr/local/airflow/dags"
    assert env["POLYGLOT_CACHE_DIR"] in {
        target for target, source in mounts.items() if source == "model-cache"
    }


def test_qdrant_server_with_persistent_storage_and_default_connection(compose):
    qdrant = compose["services"]["qdrant"]
    assert _interpolate(qdrant["image"]).startswith("qdrant/qdrant:")
    assert "qdrant-storage:/qdrant/storage" in qdrant["volumes"]
    conn = _connection(compose)
    assert conn["conn_type"] == "qdrant"
    assert conn["host"] == "qdrant"
    assert conn["port"] == 6333
    assert "path" not in conn.get("extra", {})  # server mode, never embedded, with several workers


def test_cluster_profile_has_three_bootstrapped_nodes(compose):
    nodes = {n: s for n, s in compose["services"].items() if "cluster" in s.get("profiles", [])}
    assert sorted(nodes) == ["qdrant-node-1", "qdrant-node-2", "qdrant-node-3"]
    for name, service in nodes.items():
        assert service["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert f"http://{name}:6335" in service["command"]
        if name != "qdrant-node-1":
            assert "--bootstrap" in service["command"]
            assert "http://qdrant-node-1:6335" in service["command"]
    # The default services carry no profile, so plain `docker compose up` needs no flag.
    assert all("profiles" not in compose["services"][name] for name in AIRFLOW_SERVICES)


def test_cluster_command_sets_shards_and_replicas_in_the_connection_extra(compose, monkeypatch):
    """The documented cluster command reaches the hook as collection options; plain `up` sets none."""
    from polyglot_catalog.provider.hooks import PolyglotQdrantHook

    env = _cluster_command_env()
    assert env["QDRANT_HOST"] == "qdrant-node-1"
    conn = _connection(compose, env)
    assert conn["host"] == "qdrant-node-1"
    assert (conn["extra"]["shard_number"], conn["extra"]["replication_factor"]) == (3, 2)
    assert conn["extra"]["replication_factor"] <= 3  # no more copies than nodes

    monkeypatch.setenv("AIRFLOW_CONN_QDRANT_DEFAULT", json.dumps(conn))
    assert PolyglotQdrantHook().collection_options() == {"shard_number": 3, "replication_factor": 2}
    monkeypatch.setenv("AIRFLOW_CONN_QDRANT_DEFAULT", json.dumps(_connection(compose)))
    assert PolyglotQdrantHook().collection_options() == {}  # single node: the server's defaults


def test_every_named_volume_is_declared(compose):
    declared = set(compose["volumes"])
    used = {
        mount.split(":")[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used <= declared
    assert {"model-cache", "qdrant-storage", "postgres-db"} <= used
