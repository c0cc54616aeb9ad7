#!/usr/bin/env python3
"""Which of the operator's RBAC grants the end-to-end suite used, from the API server's audit log.

    rbac_usage.py AUDIT_LOG USERNAME ROLE.json...

ROLE.json: the operator's ClusterRole and Roles as `kubectl get -o json` prints them. Every
(apiGroup, resource, verb) they grant must appear in an audited request of USERNAME that RBAC
allowed (`authorization.k8s.io/decision: allow`; an admission refusal afterwards, such as a
ResourceQuota's, still used the grant), unless JUSTIFIED below says why the suite cannot exercise
it. A request RBAC refused, or a justification for a grant that no longer exists, fails too. Prints the
usage table; exits 1 on a problem.
"""

import collections
import json
import sys

# Grants the suite does not exercise, each with the reason it is still needed.
_READ_AFTER_CREATE = (
    "reads who controls an object a create found although no watch showed it (created by "
    "someone else without the operator's label): one generic path (children::check_existing), "
    "which the suite exercises with a ConfigMap (scenario name_conflict)")
_REAPPLY = (
    "re-applied when its rendered content changes, i.e. after an operator upgrade renders it "
    "differently; within one version it depends only on the job's name and uid (the suite "
    "exercises re-applying with ConfigMaps and NetworkPolicies)")
JUSTIFIED = {
    ("", "services", "get"): _READ_AFTER_CREATE,
    ("", "serviceaccounts", "get"): _READ_AFTER_CREATE,
    ("rbac.authorization.k8s.io", "roles", "get"): _READ_AFTER_CREATE,
    ("rbac.authorization.k8s.io", "rolebindings", "get"): _READ_AFTER_CREATE,
    ("networking.k8s.io", "networkpolicies", "get"): _READ_AFTER_CREATE,
    ("batch", "jobs", "get"): (
        "reads the current attempt's Job when the watch may not show the operator's own create "
        "yet (Context::job_may_lag), or when a create finds a Job of that name"),
    ("", "services", "patch"): _REAPPLY,
    ("", "serviceaccounts", "patch"): _REAPPLY,
    ("rbac.authorization.k8s.io", "roles", "patch"): _REAPPLY,
    ("rbac.authorization.k8s.io", "rolebindings", "patch"): _REAPPLY,
}


def grants(paths):
    out = set()
    for path in paths:
        with open(path) as f:
            role = json.load(f)
        for rule in role.get("rules", []):
            for group in rule.get("apiGroups", [""]):
                for resource in rule.get("resources", []):
                    for verb in rule.get("verbs", []):
                        out.add((group, resource, verb))
    return out


def usage(log_path, user):
    used = collections.Counter()
    refused = collections.Counter()
    with open(log_path) as f:
        for line in f:
            e = json.loads(line)
            if e.get("user", {}).get("username") != user:
                continue
            o = e.get("objectRef") or {}
            if not o.get("resource"):
                continue
            resource = o["resource"] + (f"/{o['subresource']}" if o.get("subresource") else "")
            key = (o.get("apiGroup", ""), resource, e.get("verb"))
            decision = (e.get("annotations") or {}).get("authorization.k8s.io/decision")
            if decision == "forbid":
                refused[key] += 1
            elif decision == "allow":
                used[key] += 1
    return used, refused


def main():
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    log_path, user, roles = sys.argv[1], sys.argv[2], sys.argv[3:]
    granted = grants(roles)
    used, refused = usage(log_path, user)
    problems = []
    print(f"{'apiGroup':<26} {'resource':<22} {'verb':<7} {'requests':>8}")
    for key in sorted(granted):
        n = used.get(key, 0)
        note = ""
        if n == 0:
            if key in JUSTIFIED:
                note = f"  unused: {JUSTIFIED[key]}"
            else:
                problems.append(f"granted but never used: {key[2]} {key[1]} ({key[0] or 'core'})")
        elif key in JUSTIFIED:
            # Some justified paths run only when timing makes them (a watch that lags): fine.
            note = "  (justified as rarely exercised; used this time)"
        print(f"{key[0] or 'core':<26} {key[1]:<22} {key[2]:<7} {n:>8}{note}")
    for key, n in sorted(refused.items()):
        problems.append(f"RBAC refused the operator {n} times: {key[2]} {key[1]} ({key[0] or 'core'})")
    outside = sorted(k for k in used if k not in granted)
    for key in outside:
        # Allowed through another binding (e.g. system:basic-user's self-subject reviews): listed.
        print(f"allowed outside the chart's roles: {key[2]} {key[1]} ({key[0] or 'core'}) x{used[key]}")
    for key in JUSTIFIED:
        if key not in granted:
            problems.append(f"JUSTIFIED lists {key}, which is no longer granted: remove it")
    for p in problems:
        print("FAIL", p)
    print("rbac usage:", "FAILED" if problems else "ok",
          f"({sum(used.values())} allowed requests, {len(granted)} grants)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
