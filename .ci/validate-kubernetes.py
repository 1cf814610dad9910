#!/usr/bin/env python3
"""Checks rendered Kubernetes objects: the Prometheus Operator's (PodMonitor, PrometheusRule)
against the operator's CRD schemas vendored in deploy/kubernetes/components/prometheus-operator/
schemas; writes every other object to OUT, for kubernetes-validate.
Usage: validate-kubernetes.py RENDERED OUT"""

import json
import pathlib
import sys

import jsonschema
import yaml

SCHEMAS = pathlib.Path(__file__).resolve().parents[1] / (
    "deploy/kubernetes/components/prometheus-operator/schemas"
)
CUSTOM = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-v1.json",
}


def strict(schema):
    """The API server prunes fields a CRD does not know; a field we wrote is a typo then, so
    it is refused here (as `kubectl apply --validate=strict` would)."""
    if isinstance(schema, dict):
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for value in schema.values():
            strict(value)
    elif isinstance(schema, list):
        for value in schema:
            strict(value)
    return schema


def main(rendered: str, out: str) -> int:
    objects = [o for o in yaml.safe_load_all(pathlib.Path(rendered).read_text()) if o]
    plain, failures, checked = [], 0, 0
    for obj in objects:
        schema_file = CUSTOM.get((obj.get("apiVersion"), obj.get("kind")))
        if schema_file is None:
            plain.append(obj)
            continue
        schema = strict(json.loads((SCHEMAS / schema_file).read_text()))
        validator = jsonschema.Draft7Validator(schema)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        for error in validator.iter_errors(obj):
            failures += 1
            print(f"{name}: {'.'.join(map(str, error.path))}: {error.message}", file=sys.stderr)
        checked += 1
    pathlib.Path(out).write_text(yaml.safe_dump_all(plain, sort_keys=False))
    print(f"validate-kubernetes: {checked} operator objects checked, {len(plain)} left for kubernetes-validate")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
