"""The Kubernetes manifests (deploy/k8s): valid for the API server and the CRDs they use, and
in step with the code they deploy.

kustomize and kubeconform are built, and the schemas assembled, by
deploy/local/tools/k8s-tools (cached; the first run takes about a minute). kubeconform runs
with -strict (unknown fields are errors) against local schemas only, and a resource it has
no schema for counts as a failure here, never as a skip.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from badge_worker.api.app import create_app
from badge_worker.health import HealthServer
from badge_worker.settings import Settings
from tests.conftest import REPO

K8S = REPO / "deploy" / "k8s"
BASE, CLUSTER = K8S / "base", K8S / "overlays" / "cluster"
Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    done = subprocess.run([str(REPO / "deploy" / "local" / "tools" / "k8s-tools")], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)


def build(tools: dict[str, str], directory: Path) -> str:
    done = subprocess.run([tools["KUSTOMIZE"], "build", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def kubeconform(tools: dict[str, str], manifests: str) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """(summary counts, per-resource results that are not valid) of a strict run on stdin."""
    # the same file layouts k8s-tools writes: {kind}{-group-version} and {kind}-{group}-{version}
    k8s = tools["K8S_SCHEMA_DIR"] + "/{{ .ResourceKind }}{{ .KindSuffix }}.json"
    crds = tools["CRD_SCHEMA_DIR"] + "/{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json"
    done = subprocess.run([tools["KUBECONFORM"], "-strict", "-summary", "-output", "json",
                           "-schema-location", k8s, "-schema-location", crds, "-"],
                          input=manifests, capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    counts = report["summary"]
    assert (done.returncode == 0) == (counts["invalid"] == counts["errors"] == 0), done.stderr
    return counts, report["resources"]


def documents(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def one(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: Manifest = containers[0]
    return result


def pod_env(docs: list[Manifest], deployment: Manifest) -> dict[str, str]:
    """The environment the container gets: its envFrom ConfigMap, then its env entries
    (later wins, as in the kubelet), with secretKeyRef / fieldRef resolved."""
    spec = container(deployment)
    env: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        env.update(one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in spec.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item["valueFrom"]:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = one(docs, "Secret", ref["name"])["stringData"][ref["key"]]
        else:
            env[item["name"]] = "pod-name-0"
    return env


def settings_of(env: dict[str, str]) -> Settings:
    """The settings the pod would run with (the test process's own environment set aside)."""
    return Settings.model_validate({name.lower(): value for name, value in env.items()})


DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
SETTINGS_ENV_NAMES = {name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="module")
def base(tools: dict[str, str]) -> list[Manifest]:
    return documents(build(tools, BASE))


@pytest.fixture(scope="module")
def cluster(tools: dict[str, str]) -> list[Manifest]:
    return documents(build(tools, CLUSTER))


@pytest.mark.parametrize("directory", [BASE, CLUSTER], ids=["base", "cluster"])
def test_kubeconform_accepts_every_resource_and_skips_none(tools: dict[str, str], directory: Path) -> None:
    manifests = build(tools, directory)
    counts, problems = kubeconform(tools, manifests)
    kinds = {d["kind"] for d in documents(manifests)}
    assert {"Deployment", "ConfigMap", "Secret", "Service", "PodDisruptionBudget", "ScaledObject",
            "TriggerAuthentication", "ServiceMonitor"} <= kinds
    assert problems == []
    assert counts == {"valid": len(documents(manifests)), "invalid": 0, "errors": 0, "skipped": 0}


def test_kubeconform_rejects_broken_manifests(tools: dict[str, str], base: list[Manifest]) -> None:
    """The validator is not a rubber stamp: a misspelt field in a pod, a wrong type in a CRD
    resource, an unknown field in a ServiceMonitor and a kind without a schema all fail."""
    worker = json.loads(json.dumps(one(base, "Deployment", "badge-worker")))
    container(worker)["livenessProbee"] = container(worker).pop("livenessProbe")
    scaled = json.loads(json.dumps(one(base, "ScaledObject", "badge-worker")))
    scaled["spec"]["maxReplicaCount"] = "eight"
    monitor = json.loads(json.dumps(one(base, "ServiceMonitor", "badge-worker")))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    unknown = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}
    good = one(base, "Service", "badge-api")
    counts, problems = kubeconform(tools, yaml.safe_dump_all([worker, scaled, monitor, unknown, good]))
    assert counts == {"valid": 1, "invalid": 3, "errors": 1, "skipped": 0}
    messages = {p["kind"]: p["msg"] for p in problems}
    assert "livenessProbee" in messages["Deployment"]
    assert "maxReplicaCount" in messages["ScaledObject"]
    assert "intervall" in messages["ServiceMonitor"]
    assert "could not find schema" in messages["Gadget"]


def test_configmap_and_env_name_only_settings_fields(base: list[Manifest], cluster: list[Manifest]) -> None:
    for docs in (base, cluster):
        config = one(docs, "ConfigMap", "badge-worker-config")["data"]
        assert set(config) <= SETTINGS_ENV_NAMES, set(config) - SETTINGS_ENV_NAMES
        for name in ("badge-worker", "badge-api"):
            deployment = one(docs, "Deployment", name)
            names = {item["name"] for item in container(deployment).get("env", [])}
            assert names <= SETTINGS_ENV_NAMES, names - SETTINGS_ENV_NAMES
            settings_of(pod_env(docs, deployment))  # the pod's settings pass the settings check


def test_worker_settings_ports_and_secrets(base: list[Manifest]) -> None:
    worker = one(base, "Deployment", "badge-worker")
    env = pod_env(base, worker)
    settings = settings_of(env)
    # the contract's names, and the secured Kafka connection with its secrets from the Secret
    for name in ("consumer_group", "topic_claims", "topic_earns", "topic_results", "topic_errors", "topic_dlq",
                 "topic_events", "topic_partitions", "http_port"):
        assert getattr(settings, name) == DEFAULTS[name], name
    assert settings.kafka_security_protocol == "SASL_SSL" and settings.kafka_sasl_password is not None
    secret = one(base, "Secret", "badge-worker-secrets")["stringData"]
    for key in ("MONGODB_URI", "REDIS_URL", "KAFKA_SASL_PASSWORD"):
        assert "PLACEHOLDER" in secret[key], key  # example values, recognisably not real
    secret_refs = {item["name"]: item["valueFrom"]["secretKeyRef"]["name"]
                   for item in container(worker)["env"] if "secretKeyRef" in item.get("valueFrom", {})}
    assert secret_refs.keys() == {"MONGODB_URI", "REDIS_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert not set(secret_refs) & set(one(base, "ConfigMap", "badge-worker-config")["data"])  # secrets stay secret
    assert env.get("GROUP_INSTANCE_ID") is None  # dynamic membership on a Deployment
    assert [p["containerPort"] for p in container(worker)["ports"]] == [DEFAULTS["http_port"]]
    api = one(base, "Deployment", "badge-api")
    assert [p["containerPort"] for p in container(api)["ports"]] == [DEFAULTS["api_port"]]
    api_settings = settings_of(pod_env(base, api))
    assert api_settings.api_port == DEFAULTS["api_port"]
    assert "REDIS_URL" not in pod_env(base, api) and api_settings.kafka_sasl_password is None  # least privilege


def probes(deployment: Manifest) -> dict[str, tuple[str, int | str]]:
    spec = container(deployment)
    return {kind: (spec[kind]["httpGet"]["path"], spec[kind]["httpGet"]["port"])
            for kind in ("startupProbe", "readinessProbe", "livenessProbe")}


def named_port(deployment: Manifest, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container(deployment)["ports"] if p["name"] == port))


async def http_status(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    writer.close()
    return status


def test_worker_probes_hit_the_health_server_routes_that_mean_what_the_probes_need(base: list[Manifest]) -> None:
    """Probing the real HealthServer: readiness follows is_ready, liveness follows is_alive
    (the stalled-loop check), and the startup probe passes before the worker is ready."""
    worker = one(base, "Deployment", "badge-worker")
    found = probes(worker)
    assert {named_port(worker, port) for _, port in found.values()} == {DEFAULTS["http_port"]}
    paths = {kind: path for kind, (path, _) in found.items()}
    assert paths == {"startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}

    async def statuses(ready: bool, alive: bool) -> dict[str, int]:
        server = HealthServer(0, lambda: ready, lambda: alive, host="127.0.0.1")
        await server.start()
        try:
            assert server._server is not None
            port = server._server.sockets[0].getsockname()[1]
            return {kind: await http_status(port, path) for kind, path in paths.items()}
        finally:
            await server.stop()

    assert asyncio.run(statuses(ready=True, alive=True)) == dict.fromkeys(paths, 200)
    starting = asyncio.run(statuses(ready=False, alive=True))
    assert starting == {"startupProbe": 200, "readinessProbe": 503, "livenessProbe": 200}
    stalled = asyncio.run(statuses(ready=True, alive=False))
    assert stalled == {"startupProbe": 503, "readinessProbe": 200, "livenessProbe": 503}


def test_api_probes_are_routes_of_the_api(base: list[Manifest]) -> None:
    api = one(base, "Deployment", "badge-api")
    found = probes(api)
    assert {named_port(api, port) for _, port in found.values()} == {DEFAULTS["api_port"]}
    routes = {getattr(route, "path", None) for route in create_app(Settings()).routes}
    assert {path for path, _ in found.values()} == {"/healthz", "/readyz"} and {"/healthz", "/readyz"} <= routes
    assert found["readinessProbe"][0] == "/readyz" and found["livenessProbe"][0] == "/healthz"


def prestop_seconds(deployment: Manifest) -> int:
    command = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    return int(command[1])


def test_termination_grace_outlasts_the_drain(base: list[Manifest]) -> None:
    # the worker's last-resort exit, SHUTDOWN_GRACE_S + N seconds after SIGTERM (service/worker.py)
    source = (REPO / "src" / "badge_worker" / "service" / "worker.py").read_text()
    hard_exit_after = {int(n) for n in re.findall(r"shutdown_grace_s \+ (\d+), self\._exit_now", source)}
    assert len(hard_exit_after) == 1, "the hard-exit bound moved: update this test and the manifest"
    worker = one(base, "Deployment", "badge-worker")
    settings = settings_of(pod_env(base, worker))
    drain = prestop_seconds(worker) + settings.shutdown_grace_s + hard_exit_after.pop()
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > drain
    api = one(base, "Deployment", "badge-api")
    api_drain = prestop_seconds(api) + settings_of(pod_env(base, api)).api_shutdown_grace_s
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > api_drain


def test_pods_are_locked_down_and_sized(base: list[Manifest]) -> None:
    for name in ("badge-worker", "badge-api"):
        pod = one(base, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        spec = container(one(base, "Deployment", name))
        assert spec["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                           "capabilities": {"drop": ["ALL"]}}
        tmp = [m["name"] for m in spec["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert [v for v in pod["volumes"] if v["name"] in tmp and "emptyDir" in v]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(spec["resources"][bound]), (name, bound)
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^USER 65534(:65534)?$", dockerfile, re.M)  # numeric, so runAsNonRoot can be checked


KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def resolve(trigger: Manifest, env: dict[str, str], key: str) -> str:
    metadata = trigger["metadata"]
    return metadata[key] if key in metadata else env[metadata[key + "FromEnv"]]


@pytest.mark.parametrize("overlay", ["base", "cluster"])
def test_keda_scales_on_the_workers_own_group_and_topics(overlay: str, request: pytest.FixtureRequest) -> None:
    docs: list[Manifest] = request.getfixturevalue(overlay)
    worker = one(docs, "Deployment", "badge-worker")
    env = pod_env(docs, worker)
    settings = settings_of(env)
    scaled = one(docs, "ScaledObject", "badge-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    assert scaled["scaleTargetRef"]["envSourceContainerName"] == container(worker)["name"]
    assert "replicas" not in worker["spec"]  # KEDA owns it
    assert scaled["minReplicaCount"] >= 1
    assert scaled["maxReplicaCount"] == settings.topic_partitions == DEFAULTS["topic_partitions"]
    triggers = scaled["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    assert [resolve(t, env, "topic") for t in triggers] == settings.input_topics()
    assert Settings.model_fields["topic_claims"].default in settings.input_topics()
    for trigger in triggers:
        assert resolve(trigger, env, "consumerGroup") == settings.consumer_group
        assert resolve(trigger, env, "bootstrapServers") == settings.kafka_bootstrap_servers
        meta = trigger["metadata"]
        assert int(meta["lagThreshold"]) == DEFAULTS["batch_max_records"]
        # KEDA connects the way the worker does
        assert meta["sasl"] == KEDA_SASL[settings.kafka_sasl_mechanism]
        assert meta["tls"] == ("enable" if settings.kafka_security_protocol.endswith("SSL") else "disable")
        auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
        by_env = {item["name"]: (item["valueFrom"]["secretKeyRef"]["name"], item["valueFrom"]["secretKeyRef"]["key"])
                  for item in container(worker)["env"] if "secretKeyRef" in item.get("valueFrom", {})}
        assert refs == {"username": by_env["KAFKA_SASL_USERNAME"], "password": by_env["KAFKA_SASL_PASSWORD"]}


def test_services_budgets_and_scraping_select_the_pods(base: list[Manifest]) -> None:
    for name, port_name in (("badge-worker", "metrics"), ("badge-api", "http")):
        deployment = one(base, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        services = [s for s in base if s["kind"] == "Service" and s["spec"]["selector"].items() <= labels.items()]
        assert len(services) == 1
        service = services[0]
        container_ports = {p["name"] for p in container(deployment)["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} == container_ports
        pdb = one(base, "PodDisruptionBudget", name)["spec"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items() and pdb["maxUnavailable"] == 1
        monitor = one(base, "ServiceMonitor", name)["spec"]
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [(port_name, "/metrics")]
        assert port_name in {p["name"] for p in service["spec"]["ports"]}


def test_cluster_overlay_sets_the_scale_out_settings(base: list[Manifest], cluster: list[Manifest]) -> None:
    settings = settings_of(pod_env(cluster, one(cluster, "Deployment", "badge-worker")))
    assert settings.redis_cluster is True
    assert len(settings.kafka_bootstrap_servers.split(",")) == 3
    assert (settings.topic_replication_factor, settings.topic_min_insync_replicas) == (3, 2)
    base_settings = settings_of(pod_env(base, one(base, "Deployment", "badge-worker")))
    assert settings.redis_url != base_settings.redis_url and "PLACEHOLDER" in settings.redis_url
    assert base_settings.redis_cluster is False and base_settings.topic_replication_factor == 1
    # everything else is the base's
    unchanged = {"consumer_group", "topic_claims", "topic_earns", "topic_partitions", "mongodb_uri", "http_port"}
    assert {n: getattr(settings, n) for n in unchanged} == {n: getattr(base_settings, n) for n in unchanged}
