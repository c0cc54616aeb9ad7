#!/usr/bin/env python3
"""Validates Kubernetes YAML streams against the official schemas (kubernetes-validate, strict).

    render_validate.py [--kubernetes-version V ...] FILE...

Every document is checked against each Kubernetes version given (default: 1.33 and the newest
bundled, so the objects work on every cluster from 1.33 up), rejecting unknown fields. Unlike the
`kubernetes-validate` command, a kind without a bundled schema is a failure, not a warning, unless
it is listed with --allow-kind (custom resources such as ServiceMonitor or FineTuneJob).
Exits 0 when every document passes, 1 otherwise, printing one line per problem.
"""

import argparse
import sys

import yaml
import kubernetes_validate.utils as kv

DEFAULT_VERSIONS = ["1.33.0", kv.latest_version()]


def validate_documents(docs, label, versions=None, allow_kinds=()):
    """Returns a list of problems (strings) for the given parsed documents."""
    problems = []
    versions = versions or DEFAULT_VERSIONS
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        where = f"{label} document {i + 1}"
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            problems.append(f"{where}: not a Kubernetes object")
            continue
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{where} ({doc['kind']}/{name})"
        if doc["kind"] in allow_kinds:
            continue
        for version in versions:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError as e:
                problems.append(f"{where}: {e.message}")
            except kv.ValidationError as e:
                path = "/".join(str(p) for p in e.path)
                problems.append(f"{where}: Kubernetes {e.version}: {path}: {e.message}")
    return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubernetes-version", "-k", action="append")
    parser.add_argument("--allow-kind", action="append", default=[])
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    problems = []
    count = 0
    for path in args.files:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        count += len(docs)
        if not docs:
            problems.append(f"{path}: no documents")
        problems += validate_documents(docs, path, args.kubernetes_version, args.allow_kind)
    for p in problems:
        print(p)
    versions = args.kubernetes_version or DEFAULT_VERSIONS
    print(f"{count} object(s) in {len(args.files)} file(s) against Kubernetes {', '.join(versions)}: "
          f"{'FAILED' if problems else 'valid'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
