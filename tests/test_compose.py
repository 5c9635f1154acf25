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
_VAR = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")
API_KEY_ENV = {"QDRANT_API_KEY": "test-key"}


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` whose variable is unset: `docker compose` stops with the message."""


def _substitute(match: re.Match, env: dict[str, str]) -> str:
    name, kind, rest = match.group(1), match.group(2), match.group(3)
    if env.get(name):
        return env[name]
    if kind == "?":
        raise MissingVariable(f"{name}: {rest}")
    return rest or ""


def _interpolate(value, env: dict[str, str] | None = None):
    """Compose's ${VAR:-default} / ${VAR:?error} substitution (what `docker compose config` does) from
    ``env`` only; the Qdrant API key, which the file requires, is set unless ``env`` says otherwise."""
    env = {**API_KEY_ENV, **(env or {})}
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, str):
        return _VAR.sub(lambda m: _substitute(m, env), value)
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


def _started(compose: dict, profiles: set[str]) -> set[str]:
    """The services `docker compose [--profile P] up` starts: no profile, or an active one."""
    return {
        name
        for name, service in compose["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & profiles
    }


def test_cluster_profile_has_three_bootstrapped_nodes_and_no_stray_single_node(compose):
    qdrants = {
        n for n, s in compose["services"].items() if "qdrant/qdrant" in _interpolate(s.get("image", ""))
    }
    assert _started(compose, set()) & qdrants == {"qdrant"}
    cluster = _started(compose, {"cluster"}) & qdrants
    assert cluster == {"qdrant", "qdrant-node-2", "qdrant-node-3"}, "the cluster profile runs 3 nodes, no 4th"
    for name in cluster:
        service = compose["services"][name]
        assert service["environment"]["QDRANT__CLUSTER__ENABLED"] == "true"
        assert f"http://{name}:6335" in service["command"]
        if name != "qdrant":
            assert service["command"][service["command"].index("--bootstrap") + 1] == "http://qdrant:6335"
    # The Airflow services carry no profile, so plain `docker compose up` needs no flag.
    assert all("profiles" not in compose["services"][name] for name in AIRFLOW_SERVICES)
    assert _connection(compose, _cluster_command_env())["host"] == "qdrant"


def test_cluster_command_sets_shards_and_replicas_in_the_connection_extra(compose, monkeypatch):
    """The documented cluster command reaches the hook as collection options; plain `up` sets none."""
    from polyglot_catalog.provider.hooks import PolyglotQdrantHook

    env = _cluster_command_env()
    conn = _connection(compose, env)
    assert (conn["extra"]["shard_number"], conn["extra"]["replication_factor"]) == (3, 2)
    assert conn["extra"]["replication_factor"] <= 3  # no more copies than nodes

    monkeypatch.setenv("AIRFLOW_CONN_QDRANT_DEFAULT", json.dumps(conn))
    assert PolyglotQdrantHook().collection_options() == {
        "shard_number": 3,
        "replication_factor": 2,
        "shard_by_region": True,  # one shard key per region (SCALING.md's cluster shape)
    }
    monkeypatch.setenv("AIRFLOW_CONN_QDRANT_DEFAULT", json.dumps(_connection(compose)))
    assert PolyglotQdrantHook().collection_options() == {}  # single node: the server's defaults


def test_published_ports_listen_on_loopback_only(compose):
    published = [
        (name, str(port))
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert ("qdrant", "127.0.0.1:6333:6333") in published and (
        "airflow-apiserver",
        "127.0.0.1:8080:8080",
    ) in published
    assert all(port.startswith("127.0.0.1:") for _, port in published), published


def test_qdrant_requires_an_api_key_and_the_connection_sends_it(compose):
    for name in ("qdrant", "qdrant-node-2", "qdrant-node-3"):
        env = compose["services"][name]["environment"]
        assert _interpolate(env["QDRANT__SERVICE__API_KEY"], {"QDRANT_API_KEY": "k1"}) == "k1", name
        with pytest.raises(MissingVariable, match="QDRANT_API_KEY"):
            _interpolate(env["QDRANT__SERVICE__API_KEY"], {"QDRANT_API_KEY": ""})
    assert _connection(compose, {"QDRANT_API_KEY": "k1"})["password"] == "k1"
    with pytest.raises(MissingVariable):
        _connection(compose, {"QDRANT_API_KEY": ""})


def test_named_volumes_are_made_writable_for_the_container_user_first(compose):
    services = compose["services"]
    worker_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["airflow-worker"]["volumes"]}
    named = {target for target, source in worker_mounts.items() if not source.startswith((".", "/"))}
    assert named == {"/opt/polyglot/cache", "/opt/polyglot/data", "/opt/airflow/logs"}

    fix = services["polyglot-volumes"]
    assert fix["user"] == "0:0" and fix.get("restart") == "no"
    assert {m.split(":")[1] for m in fix["volumes"]} == named
    script = _interpolate(" ".join(fix["command"]))
    assert 'chown -R "50000:0"' in script and all(target in script for target in named)
    assert _interpolate(services["airflow-worker"]["user"]) == "50000:0"  # the owner it sets
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        assert services[name]["depends_on"]["polyglot-volumes"] == {
            "condition": "service_completed_successfully"
        }, name
    # the image creates the mount points owned by that user, so fresh volumes start writable too
    build = services["airflow-worker"]["build"]["dockerfile_inline"]
    assert "chown -R 50000:0 /opt/polyglot" in build and "USER airflow" in build


def test_image_installs_the_cpu_build_of_torch(compose):
    build = _interpolate(compose["services"]["airflow-worker"]["build"]["dockerfile_inline"])
    torch_line = next(line for line in build.splitlines() if "pip install" in line and "torch==" in line)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_line
    pinned = (ROOT / "requirements.txt").read_text(encoding="utf-8")
    version = re.search(r"^torch==(\S+)$", pinned, re.MULTILINE).group(1)
    assert f"torch=={version}" in torch_line, "the image's torch matches requirements.txt's pin"
    assert build.index("download.pytorch.org") < build.index("-r /tmp/polyglot-requirements.txt")


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
