#!/usr/bin/env python3
"""Turn one version of a CustomResourceDefinition into a standalone JSON Schema (draft 2020-12)
for check-jsonschema, as deploy/schemas/ holds them.

    scripts/crd-to-jsonschema.py CRD.yaml VERSION > deploy/schemas/KIND-VERSION.json

The CRD's openAPIV3Schema is kept, with the Kubernetes extensions made explicit:
- apiVersion and kind are pinned to the CRD's group/version and kind;
- x-kubernetes-int-or-string becomes "integer or string", nullable adds "null";
- an object that lists its properties refuses unknown ones (as `kubectl apply` with field
  validation "Strict" does), unless it has x-kubernetes-preserve-unknown-fields;
- Go's (?i) in a pattern is spelt out as [xX] classes, which ECMAScript regexes accept;
- descriptions are dropped (the schema is for checking, the CRD is the documentation).
"""
import json
import sys

import yaml


def ecmascript_case_insensitive(pattern):
    """Go's `(?i)` flag has no ECMAScript spelling: spell each letter as [xX] instead (only for
    patterns without classes or escapes; others are dropped rather than guessed)."""
    pattern = pattern.replace("(?i)", "")
    if "[" in pattern or "\\" in pattern or "(?" in pattern:
        return None
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in pattern)


def convert(node):
    if isinstance(node, list):
        return [convert(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "description" or key.startswith("x-kubernetes-"):
            continue
        if key == "nullable":
            continue
        if key == "pattern" and "(?i)" in value:
            value = ecmascript_case_insensitive(value)
            if value is None:
                continue
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: convert(v) for k, v in value.items()}
        else:
            out[key] = convert(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def main():
    path, version = sys.argv[1], sys.argv[2]
    with open(path) as f:
        crd = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition")
    spec = crd["spec"]
    entry = next(v for v in spec["versions"] if v["name"] == version)
    schema = convert(entry["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version}"}
    schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
    schema["properties"]["metadata"] = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"{spec['names']['kind']} {spec['group']}/{version}",
        **schema,
    }
    json.dump(document, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
