#!/usr/bin/env python3
"""Runs checkov (Bridgecrew's Kubernetes security linter, as a platform team would run it) on the
objects the operator renders and on the Helm chart, and fails on every finding not justified below.

    security_lint.py CHECKOV RENDERED.yaml...

CHECKOV is the checkov executable (scripts/install-python-ref.sh puts it in .venv-checkov). The
chart at <repo>/charts is rendered with the Helm SDK (default values and the values a hardened
install would set). Prints, per input, the checks passed and failed, then each exception applied
with its reason; exits 1 on a failure the EXCEPTIONS table does not justify, or on an exception
that no longer matches anything (so the table cannot go stale).
"""

import json
import os
import subprocess
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chart_check import render  # noqa: E402  (the chart as `helm install` renders it)

# Every finding we keep, in one place: (check, kind of resource, reason). Anything else fails.
EXCEPTIONS = [
    ("CKV_K8S_11", "Job",
     "CPU limits: none on trainer pods, deliberately. CFS throttling stalls a rank's step loop and "
     "with it every rank waiting in the next collective; the pods request their CPUs "
     "(spec.resources.cpu, else 2 per process) so the scheduler reserves them."),
    ("CKV_K8S_15", "Job",
     "imagePullPolicy IfNotPresent, not Always: trainer images carry CUDA and libtorch (several GB) "
     "and every attempt starts a new gang of pods; the default image is a version tag "
     "(ghcr.io/lf-operator/lf-operator:<version>), never `latest`, so a cached copy is the right one."),
    ("CKV_K8S_15", "Deployment",
     "imagePullPolicy is the chart value image.pullPolicy (default IfNotPresent on a version tag, "
     "the chart's appVersion); set it to Always where the registry policy asks for it."),
    ("CKV_K8S_43", "Job",
     "Image by tag, not digest: the operator's version tag by default; a platform that pins digests "
     "sets the chart's trainerImage (or a job's spec.image, within tenantPolicy.allowedImages) to "
     "image@sha256:..., which is rendered unchanged."),
    ("CKV_K8S_43", "Deployment",
     "Image by tag, not digest, by default (image.tag = appVersion); image.tag: sha256:... renders "
     "repository@sha256:... for platforms that pin digests (the chart check renders it)."),
    ("CKV_K8S_38", "Deployment",
     "The operator is an API client (it watches FineTuneJobs, Jobs and pods and writes children and "
     "status): it needs its service-account token. Trainer pods do not automount theirs (only the "
     "trainer container gets a bound token, for its own job's status)."),
]


def render_chart(chart_dir, values, path):
    docs, _ = render(chart_dir, values)
    with open(path, "w") as f:
        yaml.safe_dump_all([d for _, d in docs], f)


def checkov(binary, directory):
    out = subprocess.run(
        [binary, "-d", directory, "--framework", "kubernetes", "-o", "json",
         "--skip-download"],
        capture_output=True, text=True, check=False)
    if out.returncode not in (0, 1):
        raise SystemExit(f"checkov failed ({out.returncode}):\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout)
    reports = report if isinstance(report, list) else [report]
    passed, failed = [], []
    for r in reports:
        passed += r.get("results", {}).get("passed_checks", [])
        failed += r.get("results", {}).get("failed_checks", [])
    return passed, failed


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    binary, rendered = sys.argv[1], sys.argv[2:]
    here = os.path.dirname(os.path.abspath(__file__))
    chart_dir = os.path.join(here, "..", "..", "charts")
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(rendered):
            with open(path) as src, open(os.path.join(tmp, f"render-{i}-{os.path.basename(path)}"), "w") as dst:
                dst.write(src.read())
        render_chart(chart_dir, None, os.path.join(tmp, "chart-default.yaml"))
        render_chart(chart_dir, {
            "tenantPolicy": {"allowedImages": ["registry.example.com/ml/*"], "allowPlacement": False},
            "networkPolicy": {"metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
        }, os.path.join(tmp, "chart-hardened.yaml"))
        passed, failed = checkov(binary, tmp)

    by_file = {}
    for c in passed:
        by_file.setdefault(os.path.basename(c["file_path"]), [0, 0])[0] += 1
    for c in failed:
        by_file.setdefault(os.path.basename(c["file_path"]), [0, 0])[1] += 1
    for name, (p, f) in sorted(by_file.items()):
        print(f"{name}: {p} passed, {f} failed")
    if len(by_file) < len(rendered) + 2:
        print(f"FAIL checkov reported on {len(by_file)} files, expected {len(rendered) + 2}")
        return 1

    used = set()
    problems = []
    for c in failed:
        kind = c["resource"].split(".", 1)[0]
        match = next((i for i, (check, k, _) in enumerate(EXCEPTIONS)
                      if check == c["check_id"] and k == kind), None)
        if match is None:
            problems.append(f"{c['check_id']} {c['check_name']!r} on {c['resource']} "
                            f"({os.path.basename(c['file_path'])})")
        else:
            used.add(match)
    for i, (check, kind, reason) in enumerate(EXCEPTIONS):
        if i in used:
            print(f"exception {check} on {kind}: {reason}")
        else:
            problems.append(f"exception {check} on {kind} matches nothing any more: remove it")
    print(f"checkov: {len(passed)} passed, {len(failed)} failed, "
          f"{len(failed) - len([p for p in problems if not p.startswith('exception')])} of them justified")
    for p in problems:
        print("FAIL", p)
    print("security lint:", "FAILED" if problems else "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
