"""`badge-worker api`, `keys` and `customers` as the operator runs them: real processes,
real HTTP, SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from badge_worker.adapters.mongo import Repositories
from badge_worker.settings import Settings
from tests.conftest import settings_env
from tests.integration.helpers import ORG, live_badge, load


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "badge_worker.cli", *args], env=settings_env(settings),
                          capture_output=True, text=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the API exited"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not get ready")


async def test_keys_customers_and_the_api_process(settings: Settings, mongo: Repositories, tmp_path: Path) -> None:
    await load(mongo, live_badge("proc-b", name="Process badge"))
    created = cli(settings, "keys", "create", "--org", str(ORG), "--name", "ci")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert key["orgId"] == ORG and key["key"].startswith("bwk_")
    listed = cli(settings, "keys", "list", "--org", str(ORG))
    assert key["key"] not in listed.stdout and json.loads(listed.stdout.splitlines()[0])["keyId"] == key["keyId"]
    registry = tmp_path / "customers.jsonl"
    registry.write_text(json.dumps({"orgId": ORG, "customerId": 31, "externalId": "ext-31"}) + "\n"
                        + json.dumps({"orgId": ORG, "customerId": "x"}) + "\n")
    loaded = cli(settings, "customers", "load", str(registry))
    assert loaded.returncode == 1 and "loaded 1, unchanged 0, rejected 1" in loaded.stdout
    assert "customerId must be an integer" in loaded.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = settings_env(settings.model_copy(update={"api_port": port, "api_host": "127.0.0.1"}))
    log_path = tmp_path / "api.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "badge_worker.cli", "api"], env=env, stdout=log, stderr=log)
    try:
        wait_ready(url, proc)
        auth = {"Authorization": f"Bearer {key['key']}"}
        badge = httpx.get(f"{url}/v1/badges/badgeMeta/proc-b", headers=auth, timeout=10)
        assert badge.status_code == 200 and badge.json()["data"]["name"] == "Process badge"
        by_external = httpx.get(f"{url}/v1/badges/customer/ext-31", timeout=10,
                                headers={**auth, "X-CAP-CUSTOMER-IDENTIFIER": "externalId"})
        assert by_external.status_code == 200
        assert [b["badgeMetaId"] for b in by_external.json()["data"]["badges"]] == ["proc-b"]  # AVAILABLE
        revoked = cli(settings, "keys", "revoke", key["keyId"])
        assert revoked.returncode == 0 and json.loads(revoked.stdout)["active"] is False
        time.sleep(settings.api_key_cache_ttl_s + 0.5)  # the API's key cache
        assert httpx.get(f"{url}/v1/badges/badgeMeta/proc-b", headers=auth, timeout=10).status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("event") == "api_request"]
    assert {r["status"] for r in requests} >= {200, 401}
    assert all(r["orgId"] == ORG for r in requests if r["status"] == 200)
    assert not any(key["key"] in line for line in log_path.read_text().splitlines())  # no secret in the logs
    assert any(line.get("event") == "api_stopping" for line in lines)
