"""The AsyncAPI 3.0 document of the worker's topics (docs/asyncapi.yaml) and the JSON Schemas
of their records (docs/schemas/*.json), generated from settings.py and the models in wire.py.

    python -m badge_worker.asyncapi           # write both
    python -m badge_worker.asyncapi --check   # exit 1 naming each file that differs

Deterministic: sorted keys, no timestamps, so the committed files are what the code says
(tests/unit/test_asyncapi.py), and deploy/local/tools/asyncapi-validate checks the document
with the AsyncAPI parser from npm (tests/integration/test_asyncapi_valid.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import models_json_schema

from badge_worker import __version__, wire
from badge_worker.domain.events import EventName
from badge_worker.settings import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"
BINDING_VERSION = "0.5.0"  # the Kafka bindings of AsyncAPI 3.0
MODELS: dict[str, Any] = {  # schema file name -> model
    "ClaimCommand": wire.ClaimCommand, "EarnCommand": wire.EarnCommand, "Outcome": wire.Outcome,
    "Event": wire.Event, "OutputHeaders": wire.OutputHeaders, "DlqHeaders": wire.DlqHeaders,
    "InputHeaders": wire.InputHeaders,
}


def _asyncapi_schema(schema: Any) -> Any:
    """pydantic's JSON Schema, made an AsyncAPI Schema: its `discriminator` is the property
    name (a string), not OpenAPI's {propertyName, mapping} object."""
    if isinstance(schema, dict):
        out = {k: _asyncapi_schema(v) for k, v in schema.items()}
        if isinstance(out.get("discriminator"), dict):
            out["discriminator"] = out["discriminator"]["propertyName"]
        return out
    if isinstance(schema, list):
        return [_asyncapi_schema(v) for v in schema]
    return schema


def standalone_schemas() -> dict[str, dict[str, Any]]:
    """One self-contained JSON Schema (2020-12, local $defs) per record kind."""
    out = {}
    for name, model in MODELS.items():
        schema = (model.model_json_schema(by_alias=True) if isinstance(model, type) and issubclass(model, BaseModel)
                  else TypeAdapter(model).json_schema(by_alias=True))
        schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"{name}.json",
                  "title": name, **schema}
        out[name] = schema
    return out


def _components() -> dict[str, Any]:
    """Every model and sub-model once, under components/schemas, with refs between them."""
    models: list[tuple[type[BaseModel], Literal["validation"]]] = [
        (m, "validation") for m in MODELS.values() if isinstance(m, type) and issubclass(m, BaseModel)]
    _, top = models_json_schema(models, ref_template="#/components/schemas/{model}", by_alias=True)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    event = TypeAdapter(wire.Event).json_schema(ref_template="#/components/schemas/{model}", by_alias=True)
    schemas.update(event.pop("$defs", {}))
    schemas["Event"] = {"title": "Event", **event}
    converted: dict[str, Any] = _asyncapi_schema(schemas)
    return converted


def _ref(*path: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(path)}


def document(settings: Settings | None = None) -> dict[str, Any]:
    s = settings or Settings()
    partitions, replicas = s.topic_partitions, s.topic_replication_factor
    key_customer = {"type": "string", "description": "customerId in decimal: one customer's commands in order"}
    key_badge = {"type": "string", "description": "badgeMetaId: one badge's claims in order"}
    key_input = {"type": "string", "description": "the command's own key, unchanged"}

    def channel(topic: str, summary: str, messages: list[str], *, outputs: bool) -> dict[str, Any]:
        config: dict[str, Any] = {"cleanup.policy": ["delete"]}
        if outputs:
            config["max.message.bytes"] = s.output_max_message_bytes
        return {"address": topic, "description": summary,
                "messages": {m: _ref("components", "messages", m) for m in messages},
                "bindings": {"kafka": {"topic": topic, "partitions": partitions, "replicas": replicas,
                                       "topicConfiguration": config, "bindingVersion": BINDING_VERSION}}}

    def message(name: str, title: str, payload: str | dict[str, Any], headers: str, key: dict[str, Any],
                summary: str) -> dict[str, Any]:
        return {"name": name, "title": title, "summary": summary, "contentType": "application/json",
                "payload": _ref("components", "schemas", payload) if isinstance(payload, str) else payload,
                "headers": _ref("components", "schemas", headers),
                "bindings": {"kafka": {"key": key, "bindingVersion": BINDING_VERSION}}}

    group = {"groupId": {"type": "string", "enum": [s.consumer_group]}, "bindingVersion": BINDING_VERSION}

    def operation(action: str, channel_id: str, messages: list[str], summary: str) -> dict[str, Any]:
        op: dict[str, Any] = {"action": action, "channel": _ref("channels", channel_id), "summary": summary,
                              "messages": [_ref("channels", channel_id, "messages", m) for m in messages]}
        if action == "receive":
            op["bindings"] = {"kafka": group}
        return op

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "badge-worker", "version": __version__,
            "description": ("Badge claim, issue and earn commands in; exactly one outcome per command out "
                            "(results or errors), a notification event per successful earn, issue or revoke, "
                            "and a dead-letter copy of what could not be processed. Outputs are written in Kafka "
                            "transactions with the input offsets: read them with isolation.level=read_committed."),
        },
        "defaultContentType": "application/json",
        "servers": {"local": {"host": "127.0.0.1:9092", "protocol": "kafka",
                              "description": "deploy/local/stack; topics and sizes follow the worker's settings"}},
        "channels": {
            "claims": channel(s.topic_claims, "Claim and unclaim commands, keyed by badgeMetaId.",
                              ["ClaimCommand"], outputs=False),
            "earns": channel(s.topic_earns, "Issue, earn and revoke commands, keyed by customerId.",
                             ["EarnCommand"], outputs=False),
            "results": channel(s.topic_results, "Outcomes of the commands that succeeded.", ["Outcome"],
                               outputs=True),
            "errors": channel(s.topic_errors, "Outcomes of the commands that were refused or failed.",
                              ["Outcome"], outputs=True),
            "events": channel(s.topic_events, "One notification per successful earn, issue or revoke.",
                              ["Event"], outputs=True),
            "dlq": channel(s.topic_dlq, "Copies of unreadable commands and of those that failed (500); "
                           "`badge-worker dlq replay` sends them back.", ["DeadLetter"], outputs=True),
        },
        "operations": {
            "receiveClaims": operation("receive", "claims", ["ClaimCommand"], "The worker consumes claims."),
            "receiveEarns": operation("receive", "earns", ["EarnCommand"], "The worker consumes earns."),
            "sendResults": operation("send", "results", ["Outcome"], "One outcome per successful command."),
            "sendErrors": operation("send", "errors", ["Outcome"], "One outcome per refused or failed command."),
            "sendEvents": operation("send", "events", ["Event"], "Committed with the outcome that caused it."),
            "sendDeadLetters": operation("send", "dlq", ["DeadLetter"], "With the error outcome, same transaction."),
        },
        "components": {
            "messages": {
                "ClaimCommand": message("ClaimCommand", "Claim command", "ClaimCommand", "InputHeaders", key_badge,
                                        "A module claims a badge for itself, or gives the claim up."),
                "EarnCommand": message("EarnCommand", "Earn command", "EarnCommand", "InputHeaders", key_customer,
                                       "Issue, earn or revoke a customer's badge."),
                "Outcome": message("Outcome", "Outcome", "Outcome", "OutputHeaders", key_input,
                                   "The API-response envelope of one command."),
                "Event": message("Event", "Notification event", "Event", "OutputHeaders", key_customer,
                                 " or ".join(n.value for n in EventName) + " (eventName)."),
                "DeadLetter": message("DeadLetter", "Dead letter",
                                      {"description": "the command's value as it arrived: any bytes"},
                                      "DlqHeaders", key_input, "A command the worker could not process."),
            },
            "schemas": _components(),
        },
    }


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by several places in full each time: no &anchors/*aliases, which
    some AsyncAPI tools and most readers handle badly."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _yaml(doc: dict[str, Any]) -> str:
    return "# Generated by `python -m badge_worker.asyncapi`: do not edit by hand.\n" + yaml.dump(
        doc, Dumper=_PlainDumper, sort_keys=True, allow_unicode=True, width=100)


def rendered(settings: Settings | None = None) -> dict[Path, str]:
    """Every generated file and its text."""
    files = {DOCS / "asyncapi.yaml": _yaml(document(settings))}
    for name, schema in standalone_schemas().items():
        files[DOCS / "schemas" / f"{name}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="badge-worker asyncapi", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    # the defaults, not this environment's overrides: the committed document describes them
    files = rendered(Settings.model_construct())
    stale = [p for p, text in files.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path}: differs from what the code generates (run python -m badge_worker.asyncapi)",
                  file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files under {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
