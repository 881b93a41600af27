"""The committed AsyncAPI document and JSON Schemas are what the code generates, and they
name every topic the worker uses."""

from __future__ import annotations

import json

import yaml

from badge_worker import asyncapi
from badge_worker.settings import Settings


def test_committed_files_are_what_the_code_generates() -> None:
    files = asyncapi.rendered(Settings.model_construct())
    assert len(files) == 1 + len(asyncapi.MODELS)
    for path, text in files.items():
        assert path.exists(), f"{path} is missing: run python -m badge_worker.asyncapi"
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python -m badge_worker.asyncapi"
    assert asyncapi.main(["--check"]) == 0


def test_generation_is_deterministic() -> None:
    assert asyncapi.rendered(Settings.model_construct()) == asyncapi.rendered(Settings.model_construct())


def test_every_topic_has_a_channel_with_the_workers_partitions_and_operations_both_ways() -> None:
    s = Settings.model_construct()
    doc = yaml.safe_load((asyncapi.DOCS / "asyncapi.yaml").read_text())
    addresses = {c["address"]: c for c in doc["channels"].values()}
    assert set(addresses) == set(s.input_topics() + s.output_topics())
    for channel in addresses.values():
        assert channel["bindings"]["kafka"]["partitions"] == s.topic_partitions
    actions = {op["channel"]["$ref"].split("/")[-1]: op["action"] for op in doc["operations"].values()}
    by_address = {name: c["address"] for name, c in doc["channels"].items()}
    for name, action in actions.items():
        assert action == ("receive" if by_address[name] in s.input_topics() else "send")
    assert set(actions) == set(doc["channels"])


def test_a_stale_file_is_reported(tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(asyncapi, "DOCS", tmp_path)
    assert asyncapi.main(["--check"]) == 1  # nothing written there yet
    assert "asyncapi.yaml: differs" in capsys.readouterr().err
    assert asyncapi.main([]) == 0 and asyncapi.main(["--check"]) == 0
    schema = tmp_path / "schemas" / "Outcome.json"
    schema.write_text(json.dumps({"changed": True}))
    assert asyncapi.main(["--check"]) == 1
    assert "Outcome.json" in capsys.readouterr().err


def test_schemas_say_what_the_contract_requires() -> None:
    schemas = {name: json.loads((asyncapi.DOCS / "schemas" / f"{name}.json").read_text())
               for name in asyncapi.MODELS}
    assert set(schemas["EarnCommand"]["required"]) == {"orgId", "requestId", "badgeMetaId", "customerId"}
    assert schemas["EarnCommand"]["properties"]["type"]["enum"] == ["earn", "issue", "revokeEarn", "revokeIssue"]
    assert schemas["Outcome"]["additionalProperties"] is False
    assert {"x-error-code", "x-input-topic", "x-original-timestamp"} <= set(schemas["DlqHeaders"]["required"])
    assert len(schemas["Event"]["oneOf"]) == 4
