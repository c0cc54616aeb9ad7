#!/usr/bin/env python3
"""Validates custom resources against a CustomResourceDefinition's openAPIV3Schema, strictly.

    crd_validate.py CRD.yaml FILE...

Every document of each FILE is checked with `jsonschema` against the schema of the CRD version
its apiVersion names, as `kubectl apply --validate=strict` would: a field the schema does not
declare is an error (except under `x-kubernetes-preserve-unknown-fields`), `nullable` allows
null. CEL rules (`x-kubernetes-validations`) are not evaluated here. Exits 0 when every document
passes, 1 otherwise, printing one line per problem.
"""

import sys

import jsonschema
import yaml


def strict(schema):
    """The schema with Kubernetes' structural rules spelled as JSON Schema."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = schema.get("x-kubernetes-preserve-unknown-fields")
    if out.get("type") in ("object", ["object", "null"]) and "properties" in out and not preserve:
        out.setdefault("additionalProperties", False)
    if preserve and "type" not in out:
        out.pop("nullable", None)
    return out


def schemas(crd):
    group = crd["spec"]["group"]
    kind = crd["spec"]["names"]["kind"]
    for version in crd["spec"]["versions"]:
        schema = strict(version["schema"]["openAPIV3Schema"])
        # apiVersion, kind and metadata are the API server's, not the CRD's to declare.
        schema.setdefault("properties", {}).update(
            {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
        )
        yield (f"{group}/{version['name']}", kind), schema


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        known = dict(schemas(yaml.safe_load(f)))
    problems = []
    for path in sys.argv[2:]:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        for i, doc in enumerate(docs):
            where = f"{path} document {i + 1}"
            schema = known.get((doc.get("apiVersion"), doc.get("kind")))
            if schema is None:
                problems.append(f"{where}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
                continue
            for e in jsonschema.Draft4Validator(schema).iter_errors(doc):
                field = "/".join(str(p) for p in e.absolute_path)
                problems.append(f"{where}: {field}: {e.message}")
    for p in problems:
        print(f"FAILED {p}")
    if not problems:
        print(f"valid: {len(sys.argv) - 2} file(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
