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
    files = asyncapi.rendered(Settings.model_construct())
    assert files == asyncapi.rendered(Settings.model_construct())
    assert all(text.endswith("\n") and not text.endswith("\n\n") for text in files.values())
    # no YAML anchors/aliases: every shared value (the consumer group binding) written in full
    assert "&id0" not in files[asyncapi.DOCS / "asyncapi.yaml"]


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


def test_records_built_by_the_workers_own_encoders_match_the_schemas() -> None:
    """No Kafka: the pure functions that build outcomes and events (the record test in
    tests/integration/test_asyncapi_records.py does the same through a running worker)."""
    from jsonschema import Draft202012Validator

    from badge_worker.adapters import kafka_io
    from badge_worker.domain import events
    from badge_worker.domain.errors import ErrorCode, reject
    from badge_worker.domain.outcomes import envelope

    def check(name: str, instance: object) -> list[str]:
        schema = json.loads((asyncapi.DOCS / "schemas" / f"{name}.json").read_text())
        return [e.message for e in Draft202012Validator(schema).iter_errors(instance)]

    now = 1_726_204_639.822
    owner = {"ownerType": "Loyalty", "referenceId": "prog-1"}
    built = [
        events.badge_earned(1, "r1", now, customer_id=7, badge_id="b", earn_id="e", earned_on=now, event_date=now,
                            issued_id=None, expires_on=now + 86400, triggered_by=owner,
                            constraints=[{"constraintLevel": "CUSTOMER", "constraintType": "CUSTOMER_BADGE_FIXED_VALUE",
                                          "maxEarnLimit": 3, "currentEarnCount": 1, "windowStart": None,
                                          "windowEnd": None}]),
        events.badge_issued(1, "r2", now, customer_id=7, badge_id="b", issual_id="i", issued_on=now,
                            expires_on=None, triggered_by=None),
        events.badge_earn_revoked(1, "r3", now, customer_id=7, badge_id="b", earn_id="e"),
        events.badge_issue_revoked(1, "r4", now, customer_id=7, badge_id="b", issual_ids=["i", "j"]),
    ]
    for event in built:
        body = json.loads(kafka_io.encode_event(event))
        assert not check("Event", body), (body, check("Event", body))
    ok = envelope("earn", 1, "r1", {"earnedBadgeId": "e"})
    refused = envelope("earn", 1, "r5", None, reject(ErrorCode.CUSTOMER_LIMIT_REACHED, field="x"))
    unreadable = envelope(None, None, None, None, reject(ErrorCode.INVALID_VALUE, "message is not a JSON object"))
    for outcome in (ok, refused, unreadable, events.split(events.attach(ok, built[0]))[0]):
        body = json.loads(kafka_io.encode(outcome))
        assert not check("Outcome", body), (body, check("Outcome", body))
    # the private event key never leaves the worker; the schema would refuse it
    assert check("Outcome", json.loads(kafka_io.encode(events.attach(ok, built[0]))))
