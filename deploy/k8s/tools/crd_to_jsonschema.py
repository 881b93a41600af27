"""Turn CustomResourceDefinition files into the JSON schemas kubeconform looks up.

One file per served version, named ``{kind}-{group}-{version}.json`` (kind lower-cased), so
that ``-schema-location '<dir>/{{ .ResourceKind }}-{{ .Group }}-{{ .ResourceAPIVersion }}.json'``
finds it. The schemas are made strict the way kubeconform's ``-strict`` expects: an object
that lists its properties accepts no other key, unless the CRD says unknown fields are kept.
Kubernetes' OpenAPI extensions are mapped onto plain JSON Schema (int-or-string, nullable).

    python crd_to_jsonschema.py --out DIR crd.yaml...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def to_json_schema(node: Any) -> Any:
    """A copy of an openAPIV3Schema node in JSON Schema terms, strict about unknown keys."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: to_json_schema(value) for key, value in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        # the API server takes either; the schema usually says nothing about the type
        out.pop("type", None)
        out["oneOf"] = [{"type": "string"}, {"type": "integer"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    keeps_unknown = out.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in out and "additionalProperties" not in out and not keeps_unknown:
        out["additionalProperties"] = False
    return out


def convert(crd: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{file name: schema} for every version of one CRD that has a schema."""
    spec = crd["spec"]
    group, kind = spec["group"], spec["names"]["kind"]
    schemas: dict[str, dict[str, Any]] = {}
    for version in spec.get("versions", []):
        source = (version.get("schema") or {}).get("openAPIV3Schema")
        if source is None:
            continue
        schema = to_json_schema(source)
        # pin the identity, so a resource can only match the schema of its own kind
        properties = schema.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string", "enum": [f"{group}/{version['name']}"]}
        properties["kind"] = {"type": "string", "enum": [kind]}
        schema["$schema"] = "http://json-schema.org/draft-07/schema#"
        schemas[f"{kind.lower()}-{group}-{version['name']}.json"] = schema
    return schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="directory to write the schemas into")
    parser.add_argument("crds", nargs="+", type=Path, help="CRD YAML files (several documents each allowed)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    for path in args.crds:
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            for name, schema in convert(document).items():
                (args.out / name).write_text(json.dumps(schema, indent=1, sort_keys=True))
                print(f"{path.name} -> {name}", file=sys.stderr)
                written += 1
    if not written:
        print("no CRD with a schema in the given files", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
