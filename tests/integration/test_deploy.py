"""docker-compose.yml agrees with the settings; the local stack script is idempotent and
stops only what it started."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from badge_worker.settings import Settings
from tests.conftest import REPO, STACK, Servers

CONTRACT_ENV = ["KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "MONGODB_URI", "MONGODB_DATABASE", "CONSUMER_GROUP",
                "TOPIC_CLAIMS", "TOPIC_EARNS", "TOPIC_RESULTS", "TOPIC_ERRORS", "TOPIC_DLQ", "TOPIC_EVENTS"]


def test_compose_services_images_ports_and_env_agree_with_the_settings() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["mongodb"]["image"] == "mongo:7"
    assert services["worker"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (REPO / "deploy" / "Dockerfile").is_file()
    for name in ("kafka", "redis", "mongodb"):
        assert "healthcheck" in services[name]
        assert services["worker"]["depends_on"][name]["condition"] == "service_healthy"
    env = services["worker"]["environment"]
    assert set(CONTRACT_ENV) <= set(env)
    defaults = Settings()
    for name in CONTRACT_ENV[3:]:  # names and topics: the contract's defaults
        assert env[name] == getattr(defaults, name.lower()), name
    # the addresses point at the compose services, on the ports they publish
    parsed = Settings(**{k.lower(): v for k, v in env.items()})
    assert parsed.kafka_bootstrap_servers == "kafka:9092" and "9092:9092" in services["kafka"]["ports"]
    assert parsed.redis_url.startswith("redis://redis:6379") and "6379:6379" in services["redis"]["ports"]
    assert parsed.mongodb_uri == "mongodb://mongodb:27017" and "27017:27017" in services["mongodb"]["ports"]
    assert f"{parsed.http_port}:{parsed.http_port}" in services["worker"]["ports"]
    api = services["api"]  # the read API: same store, its own port, drains on SIGTERM
    assert api["command"] == ["api"] and api["depends_on"]["mongodb"]["condition"] == "service_healthy"
    assert api["environment"]["MONGODB_URI"] == env["MONGODB_URI"]
    assert f"{api['environment']['API_PORT']}:{defaults.api_port}" in api["ports"]
    assert "/readyz" in " ".join(api["healthcheck"]["test"]) and api["stop_signal"] == "SIGTERM"
    load = services["badges-load"]
    assert load["command"][:2] == ["badges", "load"] and (REPO / load["command"][2]).is_file()


def test_compose_example_badges_load_as_definitions() -> None:
    from badge_worker.cli import load_badge_files

    badges = load_badge_files([REPO / "examples" / "badges.json"])
    assert {b.earnType.value for b in badges} == {"EARN", "ISSUE_EARN"}


def port_answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_stack(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.skipif(os.environ.get("KAFKA_BOOTSTRAP_SERVERS") is not None, reason="servers given by the environment")
def test_stack_reuses_running_servers_and_down_leaves_them_alone(servers: Servers, tmp_path: Path) -> None:
    if servers.source != "local stack":
        pytest.skip("the local stack is not what serves this run")
    env = {"STACK_DIR": str(tmp_path / "second")}  # a second stack on the same ports
    up = run_stack(["up"], env)
    assert up.returncode == 0, up.stderr
    assert up.stderr.count("reusing") == 3
    status = run_stack(["status"], env).stdout
    assert status.count("answering, not started by this stack") == 3
    down = run_stack(["down"], env)
    assert down.returncode == 0 and down.stderr.count("left alone") == 3
    assert all(port_answers(p) for p in (9092, 6379, 27017))


@pytest.mark.slow
def test_stack_starts_stops_only_its_own_servers(servers: Servers, tmp_path: Path) -> None:
    if servers.source != "local stack":
        pytest.skip("the local stack is not what serves this run")
    ports = {"KAFKA_PORT": "19092", "KAFKA_CONTROLLER_PORT": "19093", "KAFKA_SCRAM_PORT": "19094",
             "KAFKA_SASL_SSL_PORT": "19095", "REDIS_PORT": "16379", "MONGO_PORT": "37017", "POSTGRES_PORT": "15432"}
    env = {"STACK_DIR": str(tmp_path / "own"), "FERRETDB_BACKEND": "sqlite", **ports}
    try:
        up = run_stack(["up"], env)
        assert up.returncode == 0, up.stderr
        assert "reusing" not in up.stderr
        again = run_stack(["up"], env)  # a second up is a no-op
        assert again.returncode == 0 and again.stderr.count("running (pid") == 3
        assert run_stack(["status"], env).stdout.count("started by this stack") == 3
    finally:
        down = run_stack(["down"], env)
    assert down.returncode == 0, down.stderr
    assert not any(port_answers(int(p)) for k, p in ports.items() if k != "KAFKA_CONTROLLER_PORT")
    assert all(port_answers(p) for p in (9092, 6379, 27017))  # the main stack is untouched
